# The `loop` image: what `loop batch --executor kubernetes` runs in each Job (and what `loop serve` can
# run in). Build it from the repository root and push it where the cluster pulls from:
#   docker build -t registry.example.com/loop:$(git rev-parse --short HEAD) .
#   loop batch --label bug --executor kubernetes --image registry.example.com/loop:<tag>
# The Job gives the repository URL, the issue and the run id as arguments; the keys (ANTHROPIC_API_KEY,
# GITHUB_TOKEN) and LOOP_DATABASE_URL come from a Kubernetes Secret (envFrom).
#
# The `serve` target is the GitHub App (`loop serve` on port 8080, health-checked on /healthz):
#   docker build --target serve -t registry.example.com/loop-serve:$(git rev-parse --short HEAD) .
# deploy/ runs it on Kubernetes (see docs/github.md).
FROM python:3.11-slim AS loop

# git: worktrees, commits, pushes; bubblewrap: confines the agent's commands; bash: the Job's entry script
RUN apt-get update \
    && apt-get install -y --no-install-recommends git bubblewrap bash ca-certificates \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/loop
COPY pyproject.toml README.md ./
COPY src ./src
COPY prompts ./prompts
COPY examples ./examples
RUN pip install --no-cache-dir ".[github,kubernetes,postgres]"

# runs as an unprivileged user: the agent's commands never run as root
RUN useradd --create-home loop
USER loop
ENV LOOP_EXAMPLES=/opt/loop/examples \
    GIT_AUTHOR_NAME=loop GIT_AUTHOR_EMAIL=loop@localhost GIT_COMMITTER_NAME=loop GIT_COMMITTER_EMAIL=loop@localhost
WORKDIR /home/loop
ENTRYPOINT []
CMD ["loop", "--help"]

# `loop serve`: the GitHub App's webhook endpoint and its workers. The queue is SQLite under the state
# directory unless `--queue postgresql://...` is given (deploy/ passes LOOP_DATABASE_URL).
FROM loop AS serve
ENV LOOP_STATE_DIR=/home/loop/state
EXPOSE 8080
# python-slim has no curl: the check is the image's own Python asking the server it runs
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]
CMD ["loop", "serve", "--host", "0.0.0.0", "--port", "8080"]

# The default target (built without --target) stays the Job image above.
FROM loop AS job
