"""The Kubernetes sandbox backend: forks as Deployments next to the baseline's (`backend`), their manifests
(`manifests`), rollout and readiness (`rollout`), the routing rules or router pod (`routing`), the API
client (`cluster`) and the backend's settings (`settings`)."""
