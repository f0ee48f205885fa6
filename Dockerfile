# syntax=docker/dockerfile:1
# Portcullis image: a multi-stage build. The runtime image holds dist/, the production
# node_modules, package.json and LICENSE — nothing from examples/ or anywhere a private key could
# sit (.dockerignore is an allow-list, and test/unit/deploy/docker.test.ts checks both).
#
# Rego policies are compiled to WebAssembly before they reach this image, e.g. with the official
# OPA image, and mounted beside portcullis.yaml:
#   docker run --rm -v "$PWD:/w" -w /w openpolicyagent/opa:latest \
#     build -t wasm -e envoy/authz/allow -o policies/authz.tar.gz policies/rego/
#
# The base is pinned to a Node release; pin it by digest too (node:20.20.2-bookworm-slim@sha256:…)
# where your registry policy asks for it.
ARG NODE_IMAGE=node:20.20.2-bookworm-slim

# V8 heap settings for a sidecar, in both stages (V8 ignores a code cache made under other flags):
# a 4 MB semi-space (Node's default is 16) keeps the young generation small: ~15-20 MB less RSS
# for ~2 % more CPU in GC. 2 MB saves a little more at low rates but promotes in-flight requests
# to the old generation at high ones (more GC, more RSS). See README, Performance.
ARG PORTCULLIS_NODE_OPTIONS="--max-semi-space-size=4"

FROM ${NODE_IMAGE} AS build
ARG PORTCULLIS_NODE_OPTIONS
ENV NODE_OPTIONS=${PORTCULLIS_NODE_OPTIONS}
WORKDIR /app
COPY package.json package-lock.json tsconfig.json tsconfig.base.json ./
COPY scripts/bundle.mjs ./scripts/bundle.mjs
COPY src ./src
COPY examples/demo/policies ./examples/demo/policies
# npm ci runs the `prepare` script (tsc, then the single-file CLI bundle). One run of the demo,
# which starts the proxy and calls it, writes the V8 code cache beside the bundle, so that the
# proxy starts in under 300 ms (the runtime user cannot write there). Then the dev dependencies go.
RUN npm ci \
  && PORTCULLIS_CODE_CACHE=write node dist/cli/launch.cjs demo --once --port 0 --admin-port 0 \
  && npm prune --omit=dev

FROM ${NODE_IMAGE}
ARG PORTCULLIS_NODE_OPTIONS
ENV NODE_ENV=production
ENV NODE_OPTIONS=${PORTCULLIS_NODE_OPTIONS}
WORKDIR /app
COPY --from=build /app/package.json ./package.json
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY LICENSE ./LICENSE
# A numeric user (Kubernetes' runAsNonRoot can only check a numeric one); the proxy needs no
# privilege: ports above 1024 and read-only files.
USER 10001:10001
# The proxy port of a config that listens on the container's interface (address: 0.0.0.0:15006).
# The admin server stays on 127.0.0.1:15000; the health check runs inside the container.
EXPOSE 15006
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["node", "/app/dist/cli/launch.cjs", "probe", "--url", "http://127.0.0.1:15000/readyz"]
ENTRYPOINT ["node", "/app/dist/cli/launch.cjs"]
CMD ["run", "-c", "/etc/portcullis/portcullis.yaml"]
