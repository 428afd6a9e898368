"""Where the deployment files are: the repository's infra/ folders, every kustomization by the name its
build goes by, and the names (model, Deployment, external Secrets and claims) the manifests share."""

from __future__ import annotations

from pathlib import Path




ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
SERVING = INFRA / "serving"
BASE = SERVING / "base"
OVERLAYS = {name: SERVING / "overlays" / name for name in ("local", "gcs", "gpu", "nfs", "kubeflow-local")}
MLFLOW = INFRA / "mlflow"
COMPOSE = INFRA / "docker-compose.yml"
KUBEFLOW = INFRA / "kubeflow"
KUBEFLOW_OVERLAYS = {name: KUBEFLOW / "overlays" / name for name in ("nfs", "multi-user", "gcs", "local")}
TRAINING = INFRA / "training"
TRAINING_KUSTOMIZATIONS = {name: TRAINING / name for name in ("tfjob", "indexed-job")}
RETRAIN = KUBEFLOW / "retrain"
KATIB = INFRA / "katib"
SECRET_EXAMPLES = KUBEFLOW / "secrets"
# Every kustomization, by the name the `builds` fixture gives its output.
BUILD_DIRS = {"base": BASE, **OVERLAYS, "mlflow": MLFLOW, "kubeflow": KUBEFLOW / "base",
              **{f"kubeflow/{name}": path for name, path in KUBEFLOW_OVERLAYS.items()},
              **{f"training/{name}": path for name, path in TRAINING_KUSTOMIZATIONS.items()},
              "kubeflow/retrain": RETRAIN, "katib": KATIB}
KUSTOMIZATIONS = list(BUILD_DIRS.values())
# Manifests applied on their own, not through a kustomization.
STANDALONE = {OVERLAYS["local"] / "model-loader.yaml", MLFLOW / "secret.example.yaml",
              *SECRET_EXAMPLES.glob("*.example.yaml"), TRAINING / "prepare-demo-data.yaml"}
# Secrets the user creates (the *.example.yaml files show them); optional ones need not exist.
EXTERNAL_SECRETS = {"mlflow-db", "cvpipe-gcp", "cvpipe-aws", "cvpipe-mlflow"}
# Claims a build mounts but another kustomization creates (in the same namespace; checked below).
EXTERNAL_CLAIMS = {"kubeflow-local": {"cvpipe-models"}, "training/tfjob": {"cvpipe-data"},
                   "training/indexed-job": {"cvpipe-data"}, "kubeflow/retrain": {"cvpipe-data"},
                   "katib": {"cvpipe-data"}}
MODEL_NAME = "cvpipe-classifier"
SERVING_DEPLOYMENT = "tf-serving"
CLUSTER_SCOPED = {"Namespace", "PersistentVolume", "StorageClass", "ClusterRole", "ClusterRoleBinding",
                  "CustomResourceDefinition", "PriorityClass"}
