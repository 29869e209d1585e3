"""gitops-agent: pull-based GitOps deployments for Docker Compose hosts."""

__version__ = "0.1.0"
