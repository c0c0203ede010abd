"""The Docker worker `dialsum worker` runs for Docker pools: prefect-docker's, minus leftover containers.

prefect-docker creates a flow run's container, then starts it. When the start fails (a GPU device
request on a host without the NVIDIA runtime, a port or device in use), the container stays behind
in state `created` and `auto_remove` never applies, since it never ran. This worker removes it and
re-raises, so the run fails with Docker's error and leaves nothing behind.

Run as `python -m dialsum.orchestration.docker_worker worker start --pool NAME …` (Prefect's CLI, with this worker
registered for the `docker` type). Needs `prefect-docker`, which the worker image installs.
"""

from __future__ import annotations

import threading
import warnings
from typing import Any

from prefect_docker.worker import DockerWorker

_created = threading.local()

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # replacing the registered `docker` worker type is the point

    class CleanupDockerWorker(DockerWorker):
        """A Docker worker that removes a container it created when starting it fails."""

        def _create_container(self, docker_client: Any, **kwargs: Any) -> Any:
            container = super()._create_container(docker_client, **kwargs)
            _created.container = container
            return container

        def _create_and_start_container(self, configuration: Any) -> Any:
            _created.container = None
            try:
                return super()._create_and_start_container(configuration)
            except Exception:
                container, _created.container = _created.container, None
                if container is not None:
                    self._logger.warning("Removing container %r: it was created but did not start.", container.name)
                    try:
                        container.remove(force=True)
                    except Exception as exc:  # the start error below is the one to report
                        self._logger.warning("Could not remove container %r: %s", container.name, exc)
                raise


if __name__ == "__main__":
    from prefect.cli import app

    app()
