#!/bin/sh
# Install steps shared by images/*/Dockerfile: `install.sh python|torch|deps|wheel|app [PACKAGES...]`.
# Build arguments arrive as environment variables:
#   INSTALLER       uv (default) or pip
#   PYTHON_SOURCE   uv: a uv-managed CPython PYTHON_VERSION (downloaded); system: the base image's pythonX.Y
#   TORCH_SOURCE    pypi: PyPI's build (CUDA on Linux x86_64); local: the wheel in the build context's .whl/;
#                   any other value: a package index URL, e.g. https://download.pytorch.org/whl/cu128
# An optional CA bundle mounted as the BuildKit secret `ca` (/run/secrets/ca) is trusted for this step only,
# for networks behind a TLS-intercepting proxy.
set -eu

if [ -s /run/secrets/ca ]; then
  export PIP_CERT=/run/secrets/ca SSL_CERT_FILE=/run/secrets/ca REQUESTS_CA_BUNDLE=/run/secrets/ca
fi

pip_install() {
  if [ "$INSTALLER" = uv ]; then
    uv pip install "$@"
  else
    python -m pip install --disable-pip-version-check --no-input "$@"
  fi
}

case "$1" in
  python)
    case "$INSTALLER/$PYTHON_SOURCE" in
      uv/uv) uv python install "$PYTHON_VERSION" && uv venv --python "$PYTHON_VERSION" "$VIRTUAL_ENV" ;;
      uv/system) uv venv --python "python$PYTHON_VERSION" "$VIRTUAL_ENV" ;;
      pip/system) "python$PYTHON_VERSION" -m venv "$VIRTUAL_ENV" ;;
      *) echo "PYTHON_SOURCE=$PYTHON_SOURCE needs INSTALLER=uv" >&2; exit 2 ;;
    esac
    ;;
  torch)
    case "$TORCH_SOURCE" in
      pypi) pip_install "torch==$TORCH_VERSION" ;;
      local)
        set -- /wheelhouse/torch-"$TORCH_VERSION"[+-]*.whl
        [ -f "$1" ] || { echo "TORCH_SOURCE=local: no torch-$TORCH_VERSION wheel in .whl/ of the build context" >&2; exit 2; }
        pip_install "$1" ;;
      *) pip_install --index-url "$TORCH_SOURCE" "torch==$TORCH_VERSION" ;;
    esac
    ;;
  deps)
    shift
    python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
      > /tmp/requirements.txt
    pip_install -r /tmp/requirements.txt "$@"
    rm /tmp/requirements.txt
    ;;
  extra)
    shift
    pip_install "$@"
    ;;
  wheel)
    if [ "$INSTALLER" = uv ]; then uv build --wheel --out-dir /wheels .; else python -m pip wheel --no-deps --wheel-dir /wheels .; fi
    ;;
  app)
    pip_install --no-deps /wheels/dialsum-*.whl
    ;;
  *)
    echo "usage: install.sh python|torch|deps|extra|wheel|app" >&2
    exit 2
    ;;
esac
