"""Whether a manifest's fields exist in the Kubernetes API and have its types: the models of the
`kubernetes` client in requirements.lock, and the CRDs declared here: the Training Operator's TFJob and
Katib's Experiment."""

from __future__ import annotations





# Custom resources the kubernetes client has no models for: their fields, as the client would declare
# them (JSON name -> type; type names are client models, these, or str/int/bool/dict(...)/list[...]).
# TFJob: kubeflow.org/v1 of the Kubeflow Training Operator (pkg/apis/kubeflow.org/v1: TFJobSpec,
# RunPolicy, SchedulingPolicy, ReplicaSpec); enumerated values are checked by tfjob_problems.
# Experiment: kubeflow.org/v1beta1 of Katib, transcribed from the models of the kubeflow-katib 0.19.0 SDK
# (kubeflow/katib/models/v1beta1_*.py: openapi_types by attribute_map); the SDK itself cannot be installed
# beside TensorFlow (it pins protobuf<5). A trial's trialSpec is free-form there: tests check it as a Job.
CRD_MODELS = {
    ("kubeflow.org/v1", "TFJob"): "KubeflowOrgV1TFJob",
    ("kubeflow.org/v1beta1", "Experiment"): "V1beta1Experiment",
}
CRD_TYPES = {
    "KubeflowOrgV1TFJob": {"apiVersion": "str", "kind": "str", "metadata": "V1ObjectMeta",
                           "spec": "KubeflowOrgV1TFJobSpec", "status": "object"},
    "KubeflowOrgV1TFJobSpec": {"runPolicy": "KubeflowOrgV1RunPolicy", "successPolicy": "str",
                               "tfReplicaSpecs": "dict(str, KubeflowOrgV1ReplicaSpec)", "enableDynamicWorker": "bool"},
    "KubeflowOrgV1RunPolicy": {"cleanPodPolicy": "str", "ttlSecondsAfterFinished": "int",
                               "activeDeadlineSeconds": "int", "backoffLimit": "int",
                               "schedulingPolicy": "KubeflowOrgV1SchedulingPolicy", "suspend": "bool", "managedBy": "str"},
    "KubeflowOrgV1SchedulingPolicy": {"minAvailable": "int", "queue": "str", "minResources": "dict(str, str)",
                                      "priorityClass": "str", "scheduleTimeoutSeconds": "int"},
    "KubeflowOrgV1ReplicaSpec": {"replicas": "int", "template": "V1PodTemplateSpec", "restartPolicy": "str"},
    "V1beta1Experiment": {"apiVersion": "str", "kind": "str", "metadata": "V1ObjectMeta",
                          "spec": "V1beta1ExperimentSpec", "status": "object"},
    "V1beta1ExperimentSpec": {"algorithm": "V1beta1AlgorithmSpec", "earlyStopping": "V1beta1EarlyStoppingSpec",
                              "maxFailedTrialCount": "int", "maxTrialCount": "int",
                              "metricsCollectorSpec": "V1beta1MetricsCollectorSpec", "nasConfig": "object",
                              "objective": "V1beta1ObjectiveSpec", "parallelTrialCount": "int",
                              "parameters": "list[V1beta1ParameterSpec]", "resumePolicy": "str",
                              "trialTemplate": "V1beta1TrialTemplate"},
    "V1beta1ParameterSpec": {"feasibleSpace": "V1beta1FeasibleSpace", "name": "str", "parameterType": "str"},
    "V1beta1FeasibleSpace": {"distribution": "str", "list": "list[str]", "max": "str", "min": "str", "step": "str"},
    "V1beta1ObjectiveSpec": {"additionalMetricNames": "list[str]", "goal": "float",
                             "metricStrategies": "list[V1beta1MetricStrategy]", "objectiveMetricName": "str",
                             "type": "str"},
    "V1beta1MetricStrategy": {"name": "str", "value": "str"},
    "V1beta1AlgorithmSpec": {"algorithmName": "str", "algorithmSettings": "list[V1beta1AlgorithmSetting]"},
    "V1beta1AlgorithmSetting": {"name": "str", "value": "str"},
    "V1beta1EarlyStoppingSpec": {"algorithmName": "str", "algorithmSettings": "list[V1beta1EarlyStoppingSetting]"},
    "V1beta1EarlyStoppingSetting": {"name": "str", "value": "str"},
    "V1beta1TrialTemplate": {"configMap": "V1beta1ConfigMapSource", "failureCondition": "str",
                             "primaryContainerName": "str", "primaryPodLabels": "dict(str, str)", "retain": "bool",
                             "successCondition": "str", "trialParameters": "list[V1beta1TrialParameterSpec]",
                             "trialSpec": "object"},
    "V1beta1TrialParameterSpec": {"description": "str", "name": "str", "reference": "str"},
    "V1beta1ConfigMapSource": {"configMapName": "str", "configMapNamespace": "str", "templatePath": "str"},
    "V1beta1MetricsCollectorSpec": {"collector": "V1beta1CollectorSpec", "source": "V1beta1SourceSpec"},
    "V1beta1CollectorSpec": {"customCollector": "V1Container", "kind": "str"},
    "V1beta1SourceSpec": {"fileSystemPath": "V1beta1FileSystemPath", "filter": "V1beta1FilterSpec",
                          "httpGet": "V1HTTPGetAction"},
    "V1beta1FilterSpec": {"metricsFormat": "list[str]"},
    "V1beta1FileSystemPath": {"format": "str", "kind": "str", "path": "str"},
}


def k8s_schema_problems(doc: dict) -> list[str]:
    """Fields of `doc` unknown to the Kubernetes API, or of the wrong type (client models; CRD_TYPES)."""
    import kubernetes.client as k8s

    api_version, kind = doc.get("apiVersion", ""), doc.get("kind", "")
    model_name = CRD_MODELS.get((api_version, kind))
    if model_name is None:
        model = getattr(k8s, api_version.rsplit("/", 1)[-1].capitalize() + kind, None)
        if model is None:
            return [f"{kind} {api_version}: not a Kubernetes API kind"]
        model_name = model.__name__
    problems: list[str] = []

    def walk(value, type_name: str, path: str, quantity: bool = False) -> None:
        if type_name == "object":  # IntOrString, RawExtension: any scalar or map
            return
        if type_name.startswith("list["):
            if not isinstance(value, list):
                problems.append(f"{path}: expected a list")
                return
            for i, item in enumerate(value):
                walk(item, type_name[5:-1], f"{path}[{i}]", quantity)
        elif type_name.startswith("dict("):
            if not isinstance(value, dict):
                problems.append(f"{path}: expected a map")
                return
            value_type = type_name[type_name.index(",") + 1:-1].strip()
            is_quantity = path.rsplit(".", 1)[-1] in ("limits", "requests", "capacity", "hard")
            for key, item in value.items():
                walk(item, value_type, f"{path}.{key}", is_quantity)
        elif type_name in ("str", "datetime"):
            ok = isinstance(value, str) or (quantity and isinstance(value, (int, float)) and not isinstance(value, bool))
            if not ok:
                problems.append(f"{path}: expected a string, got {value!r}")
        elif type_name == "int":
            if not isinstance(value, int) or isinstance(value, bool):
                problems.append(f"{path}: expected an integer, got {value!r}")
        elif type_name == "bool":
            if not isinstance(value, bool):
                problems.append(f"{path}: expected true/false, got {value!r}")
        elif type_name == "float":
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                problems.append(f"{path}: expected a number, got {value!r}")
        else:
            if not isinstance(value, dict):
                problems.append(f"{path}: expected a {type_name} map, got {value!r}")
                return
            if type_name in CRD_TYPES:
                fields = CRD_TYPES[type_name]
            else:
                cls = getattr(k8s, type_name)
                fields = {json_name: cls.openapi_types[attr] for attr, json_name in cls.attribute_map.items()}
            for key, item in value.items():
                if key == "$patch":  # strategic-merge directive in patch files
                    continue
                if key not in fields:
                    problems.append(f"{path}.{key}: unknown field of {type_name}")
                else:
                    walk(item, fields[key], f"{path}.{key}")

    walk(doc, model_name, f"{kind}/{doc.get('metadata', {}).get('name')}")
    return problems
