#!/usr/bin/env bash
# Bring the shared DVC workspace up to this image's release of the project; compose's airflow-init runs it
# on every `docker compose up`, before any other Airflow component starts.
#
# The workspace ($KPIGUARD_WORKSPACE, the `workspace` volume, shared by every Airflow component and the GPU
# workers) holds the pipeline's state: data/, models/artifacts/, reports/, dvc.lock and the DVC cache. The
# release ($KPIGUARD_RELEASE, read-only in the image) holds the project: code, dags/, dvc.yaml, params.yaml,
# expectations/. Release entries replace the workspace's copies (so a removed DAG or module disappears);
# the state is kept. Then DVC is configured for the stack: no git in the workspace, and the `storage`
# remote on the stack's S3 ($AWS_ENDPOINT_URL, bucket $DVC_BUCKET) as the default remote, in
# .dvc/config.local (credentials stay in the environment: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY).
set -euo pipefail

src=${KPIGUARD_RELEASE:-/opt/kpiguard-release}
dst=${KPIGUARD_WORKSPACE:-/opt/kpiguard}
[ -f "$src/dvc.yaml" ] || { echo "sync-workspace: no release at $src" >&2; exit 1; }
mkdir -p "$dst"

shopt -s dotglob nullglob
for entry in "$src"/*; do
  name=$(basename "$entry")
  case "$name" in
    # state, or directories that mix state and code: merged by the copy below, never removed
    .dvc | models | data | reports | metrics | dvc.lock) ;;
    *) rm -rf "${dst:?}/$name" ;;
  esac
done
# models/: the detectors' code comes from the release, models/artifacts/ (trained detectors) stays
if [ -d "$dst/models" ]; then
  find "$dst/models" -mindepth 1 -maxdepth 1 ! -name artifacts -exec rm -rf {} +
fi
cp -R --preserve=mode,timestamps "$src/." "$dst/"
mkdir -p "$dst/data" "$dst/models/artifacts" "$dst/reports"

cd "$dst"
dvc config --local core.no_scm true
if [ -n "${AWS_ENDPOINT_URL:-}" ]; then
  dvc remote modify --local storage endpointurl "$AWS_ENDPOINT_URL"
fi
if [ -n "${DVC_BUCKET:-}" ]; then
  dvc remote modify --local storage url "s3://${DVC_BUCKET}/cache"
fi
dvc remote default --local storage
echo "sync-workspace: $dst is at the release in $src (DVC remote: $(dvc remote list --local | tr -s ' \t' ' '))"
