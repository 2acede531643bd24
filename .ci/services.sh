#!/usr/bin/env bash
# The real services the tests use, from Debian's packages: PostgreSQL (the team tracking
# server's store), curl (its health checks), Orthanc and its DICOMweb plugin (the PACS of
# tests/pacs), Chromium (the pages a person looks at: the MLflow UI). Installed only when
# missing; tests that need a service skip with the reason when it is absent.
set -euo pipefail
PACKAGES=(postgresql curl orthanc orthanc-dicomweb chromium)
missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg -s "$pkg" > /dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" > /dev/null
  else
    echo "services: missing Debian packages ${missing[*]} (install them as root); their tests will skip" >&2
  fi
fi
