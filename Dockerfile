# syntax=docker/dockerfile:1
# Portcullis image: a multi-stage build.
#
# Rego policies are compiled to WebAssembly before they reach this image, e.g. with the official
# OPA image, and mounted (or copied) beside portcullis.yaml:
#   docker run --rm -v "$PWD:/w" -w /w openpolicyagent/opa:latest \
#     build -t wasm -e envoy/authz/allow -o policies/authz.tar.gz policies/rego/
#
# The build stage compiles TypeScript (npm ci runs the `prepare` script), then drops dev
# dependencies; the runtime stage carries only what runs.

ARG NODE_VERSION=20.20
FROM node:${NODE_VERSION}-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json tsconfig.json tsconfig.base.json ./
COPY src ./src
RUN npm ci && npm prune --omit=dev

FROM node:${NODE_VERSION}-bookworm-slim
ENV NODE_ENV=production
WORKDIR /app
COPY --from=build /app/package.json ./package.json
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY examples ./examples
COPY policies ./policies
# The node image's unprivileged user; the proxy needs no privilege (ports above 1024, read-only files).
USER node
EXPOSE 15006 15000
ENTRYPOINT ["node", "/app/dist/cli/main.js"]
CMD ["run", "-c", "/etc/portcullis/portcullis.yaml"]
