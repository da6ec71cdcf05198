#!/usr/bin/env bash
# The Kubernetes tutorial on the fabric: set up, build, bring up a 3-node Kubernetes-mode lab
# (real kube-apiserver, controller-manager, scheduler, kube-proxy on every node, CoreDNS), then
# replay kubernetes.io's "Connecting Applications with Services": an nginx Deployment (3
# replicas), a ClusterIP Service reached by name through cluster DNS from a client pod, and a
# NodePort reached from a host outside the cluster. Each step is printed with its result; the
# lab stays up at the end. Runs as root.
#   FABRIC_DEMO_LAB=NAME  the lab's name (default k8s)
#   extra arguments go to `fabric-lab up` (e.g. --backend wireguard, --proxy-mode iptables)
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh

lab=target/release/fabric-lab
name="${FABRIC_DEMO_LAB:-k8s}"
examples=deploy/lab/examples
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
show() { printf '\033[2m$ %s\033[0m\n' "$*"; "$@"; }
kubectl() { "$lab" kubectl --name "$name" -- "$@"; }
in_pod() { "$lab" exec --name "$name" "$@"; }

if [ -e "/run/fabric-lab/$name" ]; then
  step "removing the previous lab $name"
  "$lab" down --name "$name"
fi

step "a 3-node Kubernetes-mode lab"
start=$SECONDS
show "$lab" up --name "$name" --datastore kubernetes --nodes 3 --pods-per-node 0 --no-demo "$@"
echo "(up in $((SECONDS - start)) s)"

step "the cluster"
show kubectl get nodes -o wide
show kubectl get pods -n kube-system -o wide
show kubectl get services -A

step "the Deployment: 3 nginx replicas (each answers HTTP with its pod's name)"
show kubectl apply -f "$examples/nginx-deployment.yaml"
show kubectl rollout status deployment/nginx-deployment --timeout=120s
show kubectl get pods -l app=nginx -o wide

step "the Services: ClusterIP nginx-service, NodePort nginx-nodeport on 30080"
show kubectl apply -f "$examples/nginx-service.yaml" -f "$examples/nginx-nodeport.yaml"
show kubectl get services nginx-service nginx-nodeport
cluster_ip="$(kubectl get service nginx-service -o jsonpath='{.spec.clusterIP}')"
for _ in $(seq 60); do
  ready="$(kubectl get endpointslices -l kubernetes.io/service-name=nginx-service \
    -o jsonpath='{range .items[*].endpoints[?(@.conditions.ready==true)]}{.addresses[0]} {end}')"
  [ "$(wc -w <<<"$ready")" -ge 3 ] && break
  sleep 0.5
done
echo "endpoints: $ready"

step "a client pod"
show kubectl apply -f "$examples/client.yaml"
show kubectl wait --for=condition=Ready pod/client --timeout=60s
client_node="$(kubectl get pod client -o jsonpath='{.spec.nodeName}')"
echo "the client runs on $client_node"
show in_pod client cat /etc/resolv.conf

answered() { # url: curl it from the client, say which replica on which node answered
  local url="$1" pod node
  pod="$(in_pod client curl -sS --max-time 5 --retry 5 --retry-delay 1 --retry-all-errors "$url")"
  node="$(kubectl get pod "$pod" -o jsonpath='{.spec.nodeName}' 2>/dev/null || echo '?')"
  printf '  curl %-46s -> %s (on %s%s)\n' "$url" "$pod" "$node" \
    "$([ "$node" = "$client_node" ] && echo ', same node' || echo ', across the fabric')"
}

step "cluster DNS from the client"
show in_pod client dig +search +short nginx-service
show in_pod client dig +short nginx-service.default.svc.cluster.local
show in_pod client dig +short kubernetes.default.svc.cluster.local
show in_pod client dig +short -x "$cluster_ip"

# kube-proxy on the client's node programs the new Service within a moment of its endpoints.
for _ in $(seq 60); do
  in_pod client curl -s --max-time 1 -o /dev/null "http://$cluster_ip" && break
  sleep 0.5
done

step "the Service from the client: by short name, by FQDN, by ClusterIP (a replica per request)"
for url in http://nginx-service http://nginx-service.default.svc.cluster.local "http://$cluster_ip"; do
  for _ in 1 2 3; do answered "$url"; done
done

step "the NodePort from outside the cluster (host $name-ext on the underlay, 172.30.0.250)"
for ip in $(kubectl get nodes -o jsonpath='{.items[*].status.addresses[?(@.type=="InternalIP")].address}'); do
  printf '  curl http://%s:30080 -> %s\n' "$ip" \
    "$(in_pod ext curl -sS --max-time 5 --retry 5 --retry-delay 1 --retry-all-errors "http://$ip:30080")"
done

flag=""
[ "$name" = lab ] || flag=" --name $name"
step "the lab stays up"
echo "  $lab kubectl$flag -- get pods -A -o wide"
echo "  $lab exec$flag client -- curl http://nginx-service"
echo "  $lab status$flag"
echo "Tear down:"
echo "  $lab down$flag"
