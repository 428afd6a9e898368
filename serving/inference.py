"""What TF Serving does with a SignatureDef: Predict, Classify, Regress and MultiInference on one servable.

Validation, order of checks, status codes and messages follow tensorflow_serving/servables/tensorflow
(predict_util.cc, classifier.cc, regressor.cc, multi_inference.cc, util.cc). Everything here is
synchronous and transport-free; `serving.core` adds version resolution, batching and threads.

Beyond TF Serving, a Predict's inputs are checked against the SignatureDef before TensorFlow sees them
(`check_inputs`): dtype; no more dimensions than the signature's; for a TF2 signature (traced for its
shapes) the same rank and its known sizes, while a TF1 graph is fed as TF Serving feeds it (`[3]` or
`[2, 2]` into half_plus_two's `x` [-1, 1], as TF Serving's own tests do); one batch size across the
inputs with a batch dimension, and at most `max_instances` of them. A gRPC request's tensors are
checked on their declared shapes, before they are converted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Mapping, Sequence

import numpy as np
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (classification_pb2, inference_pb2, input_pb2, model_pb2, predict_pb2,
                                     regression_pb2)

from components.artifacts import SERVING_SIGNATURE
from serving.errors import failed_precondition, invalid_argument, unimplemented
from serving.servable import Servable, Signature
from serving.tensors import check_tensor_proto, datatype_of, dtype_name, to_ndarray, to_tensor_proto

PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
_EXAMPLES_INPUT, _CLASSES, _SCORES, _REGRESS_OUTPUT = "inputs", "classes", "scores", "outputs"
_LISTED = 10  # names an error message lists before "and N more"


def signature_key(name: str) -> str:
    """The signature a request means: its name, or `serving_default` when empty."""
    return name or SERVING_SIGNATURE


def model_spec(servable: Servable, signature_name: str) -> model_pb2.ModelSpec:
    """The model_spec a response echoes: name, the version that answered and the signature used."""
    spec = model_pb2.ModelSpec(name=servable.name, signature_name=signature_name)
    spec.version.value = servable.version
    return spec


@dataclass(frozen=True)
class PredictCall:
    """A validated Predict: what to run, on what, and which outputs to return."""

    servable: Servable
    signature: Signature
    inputs: dict[str, np.ndarray]
    outputs: tuple[str, ...]

    @property
    def batch_size(self) -> int | None:
        """The common leading dimension of the inputs when the call can join a batch, else None."""
        if not self.signature.batchable:
            return None
        sizes = {value.shape[0] if value.ndim else None for value in self.inputs.values()}
        if len(sizes) != 1 or None in sizes:
            return None
        return sizes.pop()


def predict_signature(servable: Servable, name: str) -> Signature:
    """The signature a Predict runs (FAILED_PRECONDITION when the model has none of that name)."""
    key = signature_key(name)
    signature = servable.signatures.get(key)
    if signature is None:
        raise failed_precondition(f'Serving signature key "{key}" not found.')
    if signature.definition.method_name not in (PREDICT_METHOD, CLASSIFY_METHOD, REGRESS_METHOD) \
            or signature.function is None:
        raise failed_precondition(
            f"Expected prediction signature method_name to be one of {{{PREDICT_METHOD}, {CLASSIFY_METHOD}, "
            f"{REGRESS_METHOD}}}. Was: {signature.definition.method_name}")
    return signature


def _names(names: Sequence[str]) -> str:
    """`{a,b,c}`, at most _LISTED names (a request may send thousands)."""
    shown = ",".join(names[:_LISTED])
    return f"{{{shown}}}" if len(names) <= _LISTED else f"{{{shown},... and {len(names) - _LISTED} more}}"


def _dims(shape: Sequence[int]) -> str:
    return "[" + ",".join(map(str, shape)) + "]"


def check_input_names(signature: Signature, names: Collection[str]) -> None:
    """The request's input aliases are exactly the signature's (predict_util.cc's messages)."""
    expected = signature.definition.inputs
    if len(names) != len(expected):
        sent, wanted = sorted(names), sorted(expected)
        raise invalid_argument(
            f"input size does not match signature: {len(names)}!={len(expected)} len({_names(sent)}) != "
            f"len({_names(wanted)}). Sent extra: {_names([a for a in sent if a not in expected])}. "
            f"Missing but required: {_names([a for a in wanted if a not in names])}.")
    for alias in names:
        if alias not in expected:
            raise invalid_argument(f"input tensor alias not found in signature: {alias}. Inputs expected to be in "
                                   f"the set {_names(sorted(expected))}.")


def check_inputs(signature: Signature, inputs: Mapping[str, tuple[int, tuple[int, ...]]],
                 max_instances: int | None = None) -> None:
    """Checks each input's (dtype, shape) against the signature and the batch size across inputs."""
    check_input_names(signature, inputs)
    batch: dict[str, int] = {}
    for alias, (dtype, shape) in inputs.items():
        info = signature.definition.inputs[alias]
        if dtype != info.dtype:
            raise invalid_argument(f"input tensor alias {alias} is {dtype_name(dtype)} but signature {signature.name} "
                                   f"takes {dtype_name(info.dtype)}: send {dtype_name(info.dtype)}")
        if info.tensor_shape.unknown_rank:
            continue
        wanted = [d.size for d in info.tensor_shape.dim]
        if len(shape) > len(wanted) or (signature.traced and (len(shape) != len(wanted) or any(
                w not in (-1, s) for w, s in zip(wanted, shape)))):
            raise invalid_argument(f"input tensor {alias} has shape {_dims(shape)} but signature {signature.name} "
                                   f"takes {_dims(wanted)} (-1: any size)")
        if shape and wanted and wanted[0] == -1:
            batch[alias] = shape[0]
    if len(set(batch.values())) > 1:
        sizes = ", ".join(f"{alias} {size}" for alias, size in sorted(batch.items())[:_LISTED])
        raise invalid_argument(f"inputs of signature {signature.name} differ in batch size (first dimension): {sizes}")
    if max_instances is not None and batch and max(batch.values()) > max_instances:
        raise invalid_argument(f"{max(batch.values())} instances in one request, more than the {max_instances} this "
                               f"server accepts (--max_request_instances): send smaller batches")


def prepare_predict(servable: Servable, signature_name: str, inputs: Mapping[str, np.ndarray],
                    output_filter: Sequence[str] = (), max_instances: int | None = None) -> PredictCall:
    """Checks a Predict's inputs and output filter against the signature (predict_util.cc, `check_inputs`)."""
    signature = predict_signature(servable, signature_name)
    check_inputs(signature, {alias: (datatype_of(value), value.shape) for alias, value in inputs.items()},
                 max_instances)
    outputs = signature.definition.outputs
    seen: list[str] = []
    for alias in output_filter:
        if alias not in outputs:
            raise invalid_argument(f"output tensor alias not found in signature: {alias} Outputs expected to be in "
                                   f"the set {_names(sorted(outputs))}.")
        if alias in seen:
            raise invalid_argument(f"duplicate output tensor alias: {alias}")
        seen.append(alias)
    return PredictCall(servable, signature, dict(inputs), tuple(seen) or tuple(sorted(outputs)))


def prepare_predict_request(servable: Servable, request: predict_pb2.PredictRequest,
                            max_instances: int | None = None) -> PredictCall:
    """A gRPC PredictRequest (or a warm-up record's) as a PredictCall: its tensors are checked against the
    signature on their declared shapes before any is converted."""
    signature = predict_signature(servable, request.model_spec.signature_name)
    check_input_names(signature, request.inputs)
    check_inputs(signature, {alias: (proto.dtype, check_tensor_proto(proto, alias))
                             for alias, proto in request.inputs.items()}, max_instances)
    inputs = {alias: to_ndarray(proto, alias) for alias, proto in request.inputs.items()}
    return prepare_predict(servable, request.model_spec.signature_name, inputs, request.output_filter, max_instances)


def run_predict(call: PredictCall) -> dict[str, np.ndarray]:
    """Runs a prepared Predict unbatched."""
    return call.servable.run(call.signature, call.inputs, call.outputs)


def predict_response(call: PredictCall, outputs: Mapping[str, np.ndarray]) -> predict_pb2.PredictResponse:
    """The PredictResponse of a Predict's outputs: the model_spec that answered and each output's TensorProto."""
    response = predict_pb2.PredictResponse(model_spec=model_spec(call.servable, call.signature.name))
    for alias, value in outputs.items():
        response.outputs[alias].CopyFrom(to_tensor_proto(value))
    return response


def examples_tensor(model_input: input_pb2.Input) -> np.ndarray:
    """The serialized tf.Examples of a Classify/Regress input, context merged in (util.cc)."""
    kind = model_input.WhichOneof("kind")
    if kind == "example_list":
        serialized = [example.SerializeToString() for example in model_input.example_list.examples]
    elif kind == "example_list_with_context":
        context = model_input.example_list_with_context.context.SerializeToString()
        serialized = [context + example.SerializeToString()
                      for example in model_input.example_list_with_context.examples]
    else:
        serialized = []
    if not serialized:
        raise invalid_argument("Input is empty.")
    return np.array(serialized, dtype=object)


def _named_signature(servable: Servable, name: str, method: str, kind: str) -> Signature:
    key = signature_key(name)
    signature = servable.signatures.get(key)
    if signature is None:
        raise invalid_argument(f"No signature was found with the name: {key}")
    if signature.definition.method_name != method:
        raise invalid_argument(f"Expected {kind} signature method_name to be {method}. "
                               f"Was: {signature.definition.method_name}")
    return signature


def _check_classification(signature: Signature) -> None:
    definition = signature.definition
    if len(definition.inputs) != 1:
        raise invalid_argument("Expected one input Tensor.")
    if len(definition.outputs) not in (1, 2):
        raise invalid_argument(f"Expected one or two output Tensors, found {len(definition.outputs)}")
    if _EXAMPLES_INPUT not in definition.inputs:
        raise failed_precondition(f"No classification inputs found in SignatureDef: {signature.name}")
    if _CLASSES not in definition.outputs and _SCORES not in definition.outputs:
        raise failed_precondition(f'Expected classification signature outputs to contain at least one of "{_CLASSES}" '
                                  f'or "{_SCORES}". Signature was: {signature.name}')


def _check_regression(signature: Signature) -> None:
    definition = signature.definition
    if len(definition.inputs) != 1:
        raise invalid_argument("Expected one input Tensor.")
    if len(definition.outputs) != 1:
        raise invalid_argument("Expected one output Tensor.")
    if _EXAMPLES_INPUT not in definition.inputs:
        raise failed_precondition(f"No regression inputs found in SignatureDef: {signature.name}")
    if _REGRESS_OUTPUT not in definition.outputs:
        raise failed_precondition(f"No regression outputs found in SignatureDef: {signature.name}")


def _run_on_examples(servable: Servable, signature: Signature, examples: np.ndarray) -> dict[str, np.ndarray]:
    if signature.definition.inputs[_EXAMPLES_INPUT].dtype != types_pb2.DT_STRING or signature.function is None:
        raise invalid_argument(f"signature {signature.name} does not take serialized tf.Examples as input "
                               f"'{_EXAMPLES_INPUT}': call it with Predict")
    return servable.run(signature, {_EXAMPLES_INPUT: examples}, tuple(signature.definition.outputs))


def _classification_result(outputs: Mapping[str, np.ndarray], num_examples: int) -> classification_pb2.ClassificationResult:
    classes, scores = outputs.get(_CLASSES), outputs.get(_SCORES)
    for alias, tensor, dtype in ((_CLASSES, classes, "DT_STRING"), (_SCORES, scores, "DT_FLOAT")):
        if tensor is None:
            continue
        if tensor.ndim != 2:
            raise invalid_argument(f"Expected Tensor shape: [batch_size num_classes] but got {list(tensor.shape)}")
        if dtype_name(datatype_of(tensor)) != dtype:
            raise invalid_argument(f"Expected {alias} Tensor of {dtype}. Got: {dtype_name(datatype_of(tensor))}")
        if tensor.shape[0] != num_examples:
            raise invalid_argument(f"Expected {alias} output batch size of {num_examples}. Got: {tensor.shape[0]}")
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        raise invalid_argument(f"Tensors class and score should match in dim_size(1). Got {classes.shape[1]} vs. "
                               f"{scores.shape[1]}")
    num_classes = (classes if classes is not None else scores).shape[1]
    result = classification_pb2.ClassificationResult()
    for i in range(num_examples):
        classifications = result.classifications.add()
        for c in range(num_classes):
            item = classifications.classes.add()
            if classes is not None:
                item.label = classes[i, c].decode("utf-8", "replace")
            if scores is not None:
                item.score = scores[i, c]
    return result


def _regression_result(outputs: Mapping[str, np.ndarray], num_examples: int) -> regression_pb2.RegressionResult:
    tensor = outputs[_REGRESS_OUTPUT]
    if not (tensor.ndim == 1 or (tensor.ndim == 2 and tensor.shape[1] == 1)):
        raise invalid_argument(f"Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got "
                               f"{list(tensor.shape)}")
    if datatype_of(tensor) != types_pb2.DT_FLOAT:
        raise invalid_argument(f"Expected output Tensor of DT_FLOAT.  Got: {dtype_name(datatype_of(tensor))}")
    if tensor.shape[0] != num_examples:
        raise invalid_argument(f"Input batch size did not match output batch size: {num_examples} vs. "
                               f"{tensor.shape[0]}")
    result = regression_pb2.RegressionResult()
    for value in tensor.reshape(-1).tolist():
        result.regressions.add(value=value)
    return result


def classify(servable: Servable, signature_name: str,
             model_input: input_pb2.Input) -> classification_pb2.ClassificationResponse:
    """Classify: tf.Examples through a classify signature into (label, score) lists."""
    signature = _named_signature(servable, signature_name, CLASSIFY_METHOD, "classification")
    _check_classification(signature)
    examples = examples_tensor(model_input)
    outputs = _run_on_examples(servable, signature, examples)
    return classification_pb2.ClassificationResponse(
        model_spec=model_spec(servable, signature.name), result=_classification_result(outputs, len(examples)))


def regress(servable: Servable, signature_name: str, model_input: input_pb2.Input) -> regression_pb2.RegressionResponse:
    """Regress: tf.Examples through a regress signature into one value each."""
    signature = _named_signature(servable, signature_name, REGRESS_METHOD, "regression")
    _check_regression(signature)
    examples = examples_tensor(model_input)
    outputs = _run_on_examples(servable, signature, examples)
    return regression_pb2.RegressionResponse(
        model_spec=model_spec(servable, signature.name), result=_regression_result(outputs, len(examples)))


def multi_inference(servable: Servable,
                    request: inference_pb2.MultiInferenceRequest) -> inference_pb2.MultiInferenceResponse:
    """Several classify/regress signatures of one model on the same examples (multi_inference.cc)."""
    tasks: list[tuple[inference_pb2.InferenceTask, Signature]] = []
    for task in request.tasks:
        if not task.model_spec.name:
            raise invalid_argument("Found ModelSpec with an empty model name.")
        if task.model_spec.name != servable.name:
            raise invalid_argument("All ModelSpecs in a MultiInferenceRequest must access the same model name.")
        key = signature_key(task.model_spec.signature_name)
        if any(key == signature.name for _, signature in tasks):
            raise invalid_argument(f"Duplicate evaluation of signature: {key}")
        signature = servable.signatures.get(key)
        if signature is None:
            raise invalid_argument(f"Requested signature not found in model graph: {key}")
        if task.method_name == CLASSIFY_METHOD:
            _check_classification(signature)
        elif task.method_name == REGRESS_METHOD:
            _check_regression(signature)
        else:
            raise unimplemented(f"Unsupported signature method_name: {task.method_name}")
        tasks.append((task, signature))
    examples = examples_tensor(request.input)
    response = inference_pb2.MultiInferenceResponse()
    for task, signature in tasks:
        outputs = _run_on_examples(servable, signature, examples)
        result = response.results.add(model_spec=model_spec(servable, signature.name))
        if task.method_name == CLASSIFY_METHOD:
            result.classification_result.CopyFrom(_classification_result(outputs, len(examples)))
        else:
            result.regression_result.CopyFrom(_regression_result(outputs, len(examples)))
    return response

