# The propeller image: the control plane (`propeller serve`), the Kubernetes
# adapter (`propeller k8s adapter`) and the node proplet (`propeller proplet`)
# are one command. The k8s manifests default to propeller/propeller-edge:latest;
# build and push it under your registry's name and pass it with --image.
#
#   docker build -t REGISTRY/propeller-edge:TAG .
FROM node:20-bookworm-slim
WORKDIR /app
# better-sqlite3 ships prebuilt binaries for linux x64/arm64 glibc; these are for other platforms
RUN apt-get update && apt-get install -y --no-install-recommends python3 make g++ && rm -rf /var/lib/apt/lists/*
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund
COPY bin ./bin
COPY broker ./broker
COPY cli ./cli
COPY control-plane ./control-plane
COPY k8s-adapter ./k8s-adapter
COPY proplet-mcu ./proplet-mcu
COPY proplet-node ./proplet-node
COPY protocol ./protocol
COPY topics ./topics
COPY wasm-runtime ./wasm-runtime
RUN ln -s /app/bin/propeller.js /usr/local/bin/propeller
USER node
ENV PROPELLER_DATA_DIR=/tmp/propeller
ENTRYPOINT ["propeller"]
CMD ["serve", "--host", "0.0.0.0"]
