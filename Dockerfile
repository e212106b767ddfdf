# The propeller image: the control plane (`propeller serve`), the Kubernetes
# adapter (`propeller k8s adapter`) and the node proplet (`propeller proplet`)
# are one command. The k8s manifests default to propeller/propeller-edge:latest;
# build and push it under your registry's name and pass it with --image.
#
#   docker build -t REGISTRY/propeller-edge:TAG .
#
# Two stages: the first installs every dependency and builds dist/ (the
# bundled command, `npm run build`), then drops the dev dependencies; the
# second copies only dist/, bin/, the web console's built assets and the
# production node_modules (the packages left outside the bundle: better-sqlite3,
# the Kubernetes client, pg, ...).
# No TypeScript source is in the image: bin/propeller.js runs dist/.

FROM node:20-bookworm-slim AS build
WORKDIR /app
# better-sqlite3 ships prebuilt binaries for linux x64/arm64 glibc; these are for other platforms
RUN apt-get update && apt-get install -y --no-install-recommends python3 make g++ && rm -rf /var/lib/apt/lists/*
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY . .
RUN npm run build && npm prune --omit=dev --no-audit --no-fund

FROM node:20-bookworm-slim
WORKDIR /app
COPY --from=build /app/package.json ./
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/bin ./bin
COPY --from=build /app/dist ./dist
COPY --from=build /app/console/dist ./console/dist
RUN ln -s /app/bin/propeller.js /usr/local/bin/propeller
USER node
ENV PROPELLER_DATA_DIR=/tmp/propeller NODE_ENV=production
ENTRYPOINT ["propeller"]
CMD ["serve", "--host", "0.0.0.0"]
