"""One loaded model version: its SignatureDefs (metadata) and its callable signatures.

The SignatureDefMap comes from the SavedModel's MetaGraphDef (saved_model.pb, or .pbtxt) for the
serving tags, exactly what GetModelMetadata returns; the functions come from `tf.saved_model.load`.
Signature functions are called with the request's tensors as serving.inference checked them: a TF1
graph's placeholders are fed as TF Serving's session feeds them (`[1, 2, 5]` feeds an `x` of
[-1, 1]); a TF2 SavedModel's signatures were traced for their input specs (`traced`), so their known
sizes hold.
"""

from __future__ import annotations

import logging
import posixpath
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import message, text_format
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow_serving.apis import get_model_metadata_pb2

from components.artifacts import SAVED_MODEL_FILE, SAVED_MODEL_TEXT_FILE
from serving.errors import ServingError, as_serving_error, not_found

logger = logging.getLogger(__name__)

_DATA_LOSS = grpc.StatusCode.DATA_LOSS


@dataclass(frozen=True)
class Signature:
    """A SignatureDef and the function that runs it (None for non-callable entries such as
    `__saved_model_init_op`)."""

    name: str
    definition: meta_graph_pb2.SignatureDef
    function: Callable[..., Mapping[str, tf.Tensor]] | None
    # A TF2 function traced for the SignatureDef's shapes (False: a TF1 graph, fed like a session).
    traced: bool = False

    @property
    def batchable(self) -> bool:
        """Whether every input and output has a leading batch dimension of unknown size."""
        infos = list(self.definition.inputs.values()) + list(self.definition.outputs.values())
        return bool(infos) and all(
            not info.tensor_shape.unknown_rank and info.tensor_shape.dim and info.tensor_shape.dim[0].size == -1
            for info in infos)


class Servable:
    """A SavedModel version, loaded and ready to run its signatures."""

    def __init__(self, name: str, version: int, path: str, meta_graph: meta_graph_pb2.MetaGraphDef,
                 loaded: tf.Module):
        self.name = name
        self.version = version
        self.path = path
        self.meta_graph = meta_graph
        self._loaded = loaded  # keeps the functions' variables and resources alive
        functions = loaded.signatures
        traced = meta_graph.HasField("object_graph_def")  # TF2 SavedModels hold their object graph
        self.signatures = {key: Signature(key, definition, functions.get(key), traced)
                           for key, definition in meta_graph.signature_def.items()}

    def __repr__(self) -> str:
        return f"Servable({self.name}, version {self.version})"

    def signature_def_map(self) -> get_model_metadata_pb2.SignatureDefMap:
        """The SignatureDefMap GetModelMetadata returns: every SignatureDef of the MetaGraphDef."""
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for key, definition in self.meta_graph.signature_def.items():
            signature_map.signature_def[key].CopyFrom(definition)
        return signature_map

    def run(self, signature: Signature, inputs: Mapping[str, np.ndarray],
            outputs: Sequence[str]) -> dict[str, np.ndarray]:
        """Runs `signature` on `inputs` (numpy, keyed by alias); returns the `outputs` aliases as numpy."""
        tensors = {alias: tf.constant(value, dtype=signature.definition.inputs[alias].dtype)
                   for alias, value in inputs.items()}
        try:
            results = signature.function(**tensors)
        except tf.errors.OpError as e:
            raise as_serving_error(e) from e
        return {alias: results[alias].numpy() for alias in outputs}


def read_meta_graph(path: str, tags: Sequence[str]) -> meta_graph_pb2.MetaGraphDef:
    """The MetaGraphDef of the SavedModel at `path` whose tag set is `tags`."""
    binary, text = posixpath.join(path, SAVED_MODEL_FILE), posixpath.join(path, SAVED_MODEL_TEXT_FILE)
    saved_model = saved_model_pb2.SavedModel()
    if tf.io.gfile.exists(binary):
        try:
            with tf.io.gfile.GFile(binary, "rb") as f:
                saved_model.ParseFromString(f.read())
        except message.DecodeError as e:
            raise ServingError(_DATA_LOSS, f"Can't parse {binary} as binary proto ({e})") from e
    elif tf.io.gfile.exists(text):
        try:
            with tf.io.gfile.GFile(text) as f:
                text_format.Parse(f.read(), saved_model)
        except text_format.ParseError as e:
            raise ServingError(_DATA_LOSS, f"Can't parse {text} as text proto ({e})") from e
    else:
        raise not_found(f"Could not find SavedModel .pb or .pbtxt at supplied export directory path: {path}")
    for meta_graph in saved_model.meta_graphs:
        if set(meta_graph.meta_info_def.tags) == set(tags):
            return meta_graph
    found = [sorted(m.meta_info_def.tags) for m in saved_model.meta_graphs]
    raise not_found(f"Could not find meta graph def matching supplied tags: {{ {' '.join(tags)} }}. Tag sets in "
                    f"{path}: {found}; choose one with --saved_model_tags (saved_model_cli show --dir {path})")


def load_servable(name: str, version: int, path: str, tags: Sequence[str] = ("serve",)) -> Servable:
    """Loads version `version` of model `name` from `path`; failures are ServingErrors with TF's code."""
    started = time.monotonic()
    meta_graph = read_meta_graph(path, tags)
    try:
        loaded = tf.saved_model.load(path, tags=list(tags))
    except Exception as e:  # TF raises OpErrors, ValueErrors and more for broken SavedModels
        raise as_serving_error(e) from e
    servable = Servable(name, version, path, meta_graph, loaded)
    logger.info("Loaded %s version %d from %s in %.1f s: signatures %s", name, version, path,
                time.monotonic() - started, sorted(servable.signatures))
    return servable
