"""Print the app's OpenAPI document as YAML: ``python -m service.openapi > openapi.yaml``.

The committed ``openapi.yaml`` is checked against the app by ``tests/service/test_openapi.py``.
"""

from __future__ import annotations

import sys

import yaml


def openapi_yaml() -> str:
    """The OpenAPI document of a default-configured app, as YAML."""
    from service.main import create_app
    from service.settings import Settings

    app = create_app(Settings(_env_file=None), routers=None)
    return yaml.safe_dump(app.openapi(), sort_keys=False, allow_unicode=True, width=100)


if __name__ == "__main__":
    sys.stdout.write(openapi_yaml())
