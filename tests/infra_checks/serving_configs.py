"""TF Serving's config files (models.config, batching.config, monitoring.config) parsed into its protos
with text_format, and the rules the server applies to them."""

from __future__ import annotations


from google.protobuf import text_format



def serving_protos():
    """(ModelServerConfig, BatchingParameters, MonitoringConfig) message classes.

    tensorflow-serving-api 2.19.1 ships tensorflow_serving/config/model_server_config_pb2 but neither
    session_bundle_config_pb2 (BatchingParameters) nor monitoring_config_pb2. If they are importable
    they are used; otherwise the two messages are declared here, field for field (names, numbers,
    types) as in tensorflow/serving's tensorflow_serving/servables/tensorflow/session_bundle_config.proto
    and tensorflow_serving/config/monitoring_config.proto, in a private descriptor pool, so that
    text_format parses the files exactly as the server's proto parser would (unknown field = error).
    """
    from tensorflow_serving.config.model_server_config_pb2 import ModelServerConfig

    try:
        from tensorflow_serving.config.monitoring_config_pb2 import MonitoringConfig
        from tensorflow_serving.servables.tensorflow.session_bundle_config_pb2 import BatchingParameters
        return ModelServerConfig, BatchingParameters, MonitoringConfig
    except ImportError:
        pass
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

    F = descriptor_pb2.FieldDescriptorProto
    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)
    file = descriptor_pb2.FileDescriptorProto(name="cvpipe_tests/tf_serving_configs.proto",
                                              package="tensorflow.serving", syntax="proto3",
                                              dependency=["google/protobuf/wrappers.proto"])
    batching = file.message_type.add(name="BatchingParameters")
    for name, number, wrapper in (("max_batch_size", 1, "Int64Value"), ("batch_timeout_micros", 2, "Int64Value"),
                                  ("max_enqueued_batches", 3, "Int64Value"), ("num_batch_threads", 4, "Int64Value"),
                                  ("thread_pool_name", 5, "StringValue")):
        batching.field.add(name=name, number=number, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                           type_name=f".google.protobuf.{wrapper}")
    batching.field.add(name="allowed_batch_sizes", number=6, type=F.TYPE_INT64, label=F.LABEL_REPEATED)
    batching.field.add(name="pad_variable_length_inputs", number=7, type=F.TYPE_BOOL, label=F.LABEL_OPTIONAL)
    prometheus = file.message_type.add(name="PrometheusConfig")
    prometheus.field.add(name="enable", number=1, type=F.TYPE_BOOL, label=F.LABEL_OPTIONAL)
    prometheus.field.add(name="path", number=2, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    monitoring = file.message_type.add(name="MonitoringConfig")
    monitoring.field.add(name="prometheus_config", number=1, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                         type_name=".tensorflow.serving.PrometheusConfig")
    pool.Add(file)
    classes = [message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.serving.{name}"))
               for name in ("BatchingParameters", "MonitoringConfig")]
    return ModelServerConfig, *classes


def parse_models(text: str):
    return text_format.Parse(text, serving_protos()[0]())


def parse_batching(text: str):
    return text_format.Parse(text, serving_protos()[1]())


def parse_monitoring(text: str):
    return text_format.Parse(text, serving_protos()[2]())


def models_config_problems(config, base_prefix: str) -> list[str]:
    """What TF Serving would refuse or mis-serve in a ModelServerConfig."""
    problems = []
    models = config.model_config_list.config
    if not models:
        problems.append("no model in model_config_list")
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        problems.append(f"duplicate model names {names}")
    for model in models:
        if model.base_path != f"{base_prefix}/{model.name}":
            problems.append(f"{model.name}: base_path {model.base_path} is not {base_prefix}/{model.name}")
        if model.model_platform != "tensorflow":
            problems.append(f"{model.name}: model_platform {model.model_platform!r}")
        policy = model.model_version_policy.WhichOneof("policy_choice")
        if policy == "specific" and not model.model_version_policy.specific.versions:
            problems.append(f"{model.name}: specific policy without versions")
        served = set(model.model_version_policy.specific.versions) if policy == "specific" else None
        for label, version in model.version_labels.items():
            # The server refuses a label on a version it does not serve (the config reload fails).
            if served is not None and version not in served:
                problems.append(f"{model.name}: label {label}={version} names a version not in {sorted(served)}")
        if "stable" not in model.version_labels:
            problems.append(f"{model.name}: no `stable` label (labels {sorted(model.version_labels)})")
        if set(model.version_labels) - {"stable", "canary"}:
            problems.append(f"{model.name}: labels {sorted(model.version_labels)} other than stable/canary")
    return problems


def batching_problems(params) -> list[str]:
    problems = []
    if params.max_batch_size.value < 1 or params.num_batch_threads.value < 1:
        problems.append("max_batch_size and num_batch_threads must be >= 1")
    if params.batch_timeout_micros.value < 0 or params.max_enqueued_batches.value < 1:
        problems.append("batch_timeout_micros must be >= 0 and max_enqueued_batches >= 1")
    sizes = list(params.allowed_batch_sizes)
    if sizes and (sizes != sorted(set(sizes)) or sizes[-1] != params.max_batch_size.value):
        problems.append(f"allowed_batch_sizes {sizes} must increase and end at max_batch_size")
    return problems
