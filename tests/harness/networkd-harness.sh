#!/bin/bash
# networkd-harness.sh - fanlink's test bed: a real systemd-networkd (Debian 12, systemd 252) WITHOUT
# systemd as PID 1, isolated in its own network + mount namespace, talking to a PRIVATE dbus-daemon
# ("system" bus). Runs as root; needs dbus (dbus-daemon), systemd (networkd, busctl, networkctl), iproute2.
#
# Usage (DIR is the instance's state directory; everything it makes is recorded there):
#   networkd-harness.sh start [DIR]           set up, print shell-eval'able exports, leave it running
#   networkd-harness.sh stop DIR              kill only the PIDs recorded in DIR, delete its netns, rm -rf DIR
#   networkd-harness.sh carrier DIR up|down   flap the far end of uplink0 (-> no-carrier / routable)
#   networkd-harness.sh link DIR up|down      set uplink0 itself down/up in the host netns (-> off)
#   networkd-harness.sh kill-networkd DIR     stop networkd (its bus name goes away)
#   networkd-harness.sh start-networkd DIR    start networkd again, wait for its name and uplink0 routable
#   networkd-harness.sh kill-bus DIR          stop the private dbus-daemon (clients get disconnected)
#   networkd-harness.sh start-bus DIR         start it again on the same socket path
#   networkd-harness.sh set-address DIR ADDR  rewrite uplink0's Address= and make networkd apply it
#                                             (reload + reconfigure: oper passes through "carrier")
#   networkd-harness.sh reconfigure DIR       networkctl reload + reconfigure uplink0
#   networkd-harness.sh networkctl DIR ARGS   networkctl inside networkd's namespaces
#   networkd-harness.sh switch-up NS          make netns NS with bridge sw-br (for SWITCH_NS)
#   networkd-harness.sh switch-down NS        delete it
#   networkd-harness.sh demo                  start + show bus objects + flap link + watch signals + stop
#
# Topology created (NAME defaults to "ndh$$" and must be unique per instance; env knobs: UPLINK_ADDR,
# UPLINK_GW (IP; "" = no Gateway= line), PEER_ADDR, SWITCH_NS, NETWORKD_LOG_LEVEL, BUS_POLICY=stock
# and BUS_POLICY_FILES: see stock_bus_conf):
#   netns $NAME-host : systemd-networkd runs here; veth "uplink0" 10.99.1.1/24, gw 10.99.1.254 (from .network)
#   netns $NAME-peer : the other end "peer0" 10.99.1.254/24 (a fake router); flap it to drop carrier
#   or, with SWITCH_NS=<netns with bridge sw-br>: the other end is enslaved to sw-br there (multi-host tests;
#   give each host its own UPLINK_ADDR, and UPLINK_GW="" unless something answers for the gateway)
# The unit under test (fanlink) runs inside $NAME-host:
#   ip netns exec $NAME-host env DBUS_SYSTEM_BUS_ADDRESS=$DBUS_SYSTEM_BUS_ADDRESS ./fanlink ...
# The bus is a PATH socket, so test code in the root netns reaches it too.
#
# Key tricks (each one was needed):
#   * dbus-daemon --config-file=<own conf> --fork --print-address=FD --print-pid=FD, PATH socket (abstract
#     sockets are per-netns), permissive policy (networkd drops to uid systemd-network before RequestName).
#     The permissive policy also lets any client own org.freedesktop.network1 or emit anything: fine for
#     forgery tests, never a model for production.
#   * networkd honours $DBUS_SYSTEM_BUS_ADDRESS (sd-bus); it waits (inotify) if the socket is not there yet.
#   * sysfs mounted READ-ONLY inside the namespace => networkd's udev_available() is false, so links go
#     pending -> initialized without udevd (with a rw /sys they stay "pending" forever).
#   * tmpfs on /run/systemd (private netif state dir; do NOT pre-create /run/systemd/netif as root:
#     networkd creates it owned by systemd-network before dropping privileges).
#   * bind-mount our .network dir over /etc/systemd/network and an empty dir over /usr/lib/systemd/network.
#   * every directory on the way to the bus socket is 0755 (networkd runs as systemd-network).
#   * the two veth ends get DIFFERENT ifindexes, or the kernel batches carrier flaps (see below).
set -euo pipefail

cmd=${1:-demo}
DIR=${2:-}
NAME=${NAME:-ndh$$}

log() { echo "[harness] $*" >&2; }
need_dir() { [ -n "$DIR" ] && [ -f "$DIR/name" ] || { log "usage: $0 $cmd DIR ..."; exit 2; }; }
ms_since() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }

# Our daemons are reparented to PID 1, which here (not systemd) reaps them only after seconds:
# a zombie has exited, so it counts as gone.
alive() { # pid
  local st; st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null) || return 1
  [ "${st%% *}" != Z ]
}

# Kill one recorded PID: TERM, wait up to 2.5 s, then KILL. Never by name.
kill_recorded() { # pidfile
  [ -f "$1" ] || return 0
  local p; p=$(cat "$1")
  kill "$p" 2>/dev/null || true
  for _ in $(seq 125); do alive "$p" || break; sleep 0.02; done
  if alive "$p"; then kill -9 "$p" 2>/dev/null || true; fi
  rm -f "$1"
}

write_network() { # address gateway
  cat > "$DIR/network/10-uplink.network" <<EOF
[Match]
Name=uplink0

[Network]
Address=$1
$( [ -n "$2" ] && echo "Gateway=$2" )
# keep the test fast/deterministic: no IPv6LL/RA/LLDP waiting
LinkLocalAddressing=no
IPv6AcceptRA=no
LLDP=no
EOF
  chmod 644 "$DIR/network/"*.network
  echo "$1" > "$DIR/uplink.addr"; echo "$2" > "$DIR/uplink.gw"
}

start_bus() {
  rm -f "$DIR/bus.sock"   # left behind only if the previous daemon was SIGKILLed
  dbus-daemon --config-file="$DIR/bus.conf" --fork --print-address=3 --print-pid=4 \
      3>"$DIR/bus.address" 4>"$DIR/bus.pid"
  log "dbus-daemon pid $(cat "$DIR/bus.pid") at $(head -1 "$DIR/bus.address")"
}

# Without the ",guid=..." part dbus-daemon prints: clients (sd-bus, zbus) check a given guid, so an
# address with one stops working once the bus is restarted (start-bus).
bus_addr() { echo "unix:path=$DIR/bus.sock"; }

start_networkd() {
  local n; n=$(cat "$DIR/name")
  ip netns exec "$n-host" "$DIR/run-networkd.sh" >>"$DIR/networkd.log" 2>&1 &
  echo $! > "$DIR/networkd.pid"      # 'exec' chain => this PID *is* systemd-networkd
}

# Wait for networkd's bus name, then for uplink0 to be routable; log both times since $1.
wait_ready() { # t0
  local addr obj deadline=$((SECONDS+20)); addr=$(bus_addr)
  until busctl --address="$addr" status org.freedesktop.network1 >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || { log "networkd never claimed the name"; cat "$DIR/networkd.log" >&2; return 1; }
    sleep 0.02
  done
  local name_ms; name_ms=$(ms_since "$1")
  # WAIT_ROUTABLE=0: the caller changed the uplink while networkd was gone and only wants it back.
  if [ "${WAIT_ROUTABLE:-1}" = 0 ]; then log "networkd pid $(cat "$DIR/networkd.pid"): name after $name_ms ms"; return 0; fi
  # object path is /org/freedesktop/network1/link/_3<ifindex> (sd-bus escapes only a LEADING digit:
  # ifindex 2 -> _32, ifindex 12 -> _312); ask networkd instead of computing it:
  obj=$(busctl --address="$addr" call org.freedesktop.network1 /org/freedesktop/network1 \
        org.freedesktop.network1.Manager GetLinkByName s uplink0 | awk '{print $3}' | tr -d '"')
  until [ "$(busctl --address="$addr" get-property org.freedesktop.network1 "$obj" \
             org.freedesktop.network1.Link OperationalState 2>/dev/null)" = 's "routable"' ]; do
    [ $SECONDS -lt $deadline ] || { log "uplink0 never became routable"; cat "$DIR/networkd.log" >&2; return 1; }
    sleep 0.02
  done
  log "networkd pid $(cat "$DIR/networkd.pid"): name after $name_ms ms, routable after $(ms_since "$1") ms"
  echo "$obj" > "$DIR/uplink.objpath"
}

# BUS_POLICY=stock: Debian's own system bus policy (this machine's /usr/share/dbus-1/system.conf)
# instead of the permissive one, with only networkd's policy file and the files BUS_POLICY_FILES
# names (space-separated) in its system.d: a package installed on the machine meanwhile must not
# change the test. Left out of the stock file: running as messagebus, the pidfile, syslog and
# activation (it would start the host's services); the daemon forks anyway (start_bus).
stock_bus_conf() {
  mkdir -p "$DIR/system.d"; chmod 755 "$DIR/system.d"
  cp /usr/share/dbus-1/system.d/org.freedesktop.network1.conf "$DIR/system.d/"
  local f; for f in ${BUS_POLICY_FILES:-}; do cp "$f" "$DIR/system.d/"; done
  sed -e "s|<listen>.*</listen>|<listen>unix:path=$DIR/bus.sock</listen>|" \
      -e '/<user>/d; /<fork\/>/d; /<pidfile>/d; /<syslog\/>/d; /<servicehelper>/d; /<standard_system_servicedirs\/>/d' \
      -e "s|<includedir>system.d</includedir>|<includedir>$DIR/system.d</includedir>|" \
      -e '\|<includedir>/etc/dbus-1/system.d</includedir>|d' \
      /usr/share/dbus-1/system.conf > "$DIR/bus.conf"
  # The edits must have happened: a stock file of another shape would give a bus that is not
  # the one the test claims to run.
  grep -q "unix:path=$DIR/bus.sock" "$DIR/bus.conf" && grep -q "<includedir>$DIR/system.d</includedir>" "$DIR/bus.conf" &&
    ! grep -qE '<user>|<includedir>system.d|servicehelper' "$DIR/bus.conf" ||
    { log "cannot adapt /usr/share/dbus-1/system.conf"; return 1; }
}

start() {
  [ -n "$DIR" ] || DIR=$(mktemp -d /tmp/ndh.XXXXXX)
  mkdir -p "$DIR"/network "$DIR"/empty "$DIR"/conf
  chmod 755 "$DIR" "$DIR"/network "$DIR"/empty "$DIR"/conf   # networkd runs as systemd-network
  echo "$NAME" > "$DIR/name"
  # On failure, undo what was made so far (the caller only learns DIR from our output).
  set -E; trap 'rc=$?; trap - ERR; log "start failed; cleaning up"; stop; exit $rc' ERR
  local t0; t0=$(date +%s%N)

  # ---- 1. private bus -------------------------------------------------------------------------
  if [ "${BUS_POLICY:-open}" = stock ]; then stock_bus_conf; else cat > "$DIR/bus.conf" <<EOF
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=$DIR/bus.sock</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
    <allow eavesdrop="true"/>
  </policy>
</busconfig>
EOF
  fi
  start_bus
  local addr; addr=$(bus_addr)

  # ---- 2. namespaces + veth -------------------------------------------------------------------
  ip netns add "$NAME-host"; touch "$DIR/own-host-ns"; ip -n "$NAME-host" link set lo up
  if [ -n "${SWITCH_NS:-}" ]; then
    # multi-host mode: plug uplink0 into bridge sw-br of an existing "switch" netns (see switch-up)
    local pif; pif=$(printf 's-%s' "$NAME" | cut -c1-15); echo "$pif" > "$DIR/peer.if"
    echo "$SWITCH_NS" > "$DIR/peer.ns"
    ip link add uplink0 netns "$NAME-host" type veth peer name "$pif" netns "$SWITCH_NS"
    touch "$DIR/own-switch-port"
    ip -n "$SWITCH_NS" link set "$pif" master sw-br up
  else
    echo peer0 > "$DIR/peer.if"; echo "$NAME-peer" > "$DIR/peer.ns"
    ip netns add "$NAME-peer"; touch "$DIR/own-peer-ns"; ip -n "$NAME-peer" link set lo up
    # Make the two veth ends get DIFFERENT ifindexes (fresh netns => both would be 2). If ifindex == iflink the
    # kernel's linkwatch treats carrier changes as non-urgent and batches them (<=1/s), so a short carrier
    # flap (<1 s) may never be reported to networkd. A throwaway bridge in the peer ns bumps peer0 to ifindex 3.
    ip -n "$NAME-peer" link add bump0 type bridge
    ip link add uplink0 netns "$NAME-host" type veth peer name peer0 netns "$NAME-peer"
    ip -n "$NAME-peer" addr add "${PEER_ADDR:-10.99.1.254/24}" dev peer0
    ip -n "$NAME-peer" link set peer0 up
  fi

  # ---- 3. networkd config ---------------------------------------------------------------------
  write_network "${UPLINK_ADDR:-10.99.1.1/24}" "${UPLINK_GW-10.99.1.254}"
  # optional: $DIR/conf/networkd.conf is bind-mounted over /etc/systemd/networkd.conf if present

  # ---- 4. networkd inside netns + private mount ns ----------------------------------------------
  cat > "$DIR/run-networkd.sh" <<EOF
#!/bin/sh
# executed via 'ip netns exec' which already unshared a (slave) mount ns and mounted this netns' sysfs
set -e
umount /sys 2>/dev/null || true
mount -t sysfs -o ro sysfs /sys
mount -t tmpfs -o mode=0755 tmpfs /run/systemd
mkdir -p /run/systemd/network
mount --bind "$DIR/network" /etc/systemd/network
mount --bind "$DIR/empty" /usr/lib/systemd/network
[ -f "$DIR/conf/networkd.conf" ] && mount --bind "$DIR/conf/networkd.conf" /etc/systemd/networkd.conf
export DBUS_SYSTEM_BUS_ADDRESS="$addr"
export SYSTEMD_LOG_LEVEL=\${NETWORKD_LOG_LEVEL:-info} SYSTEMD_LOG_TARGET=console
exec /lib/systemd/systemd-networkd
EOF
  chmod 755 "$DIR/run-networkd.sh"
  start_networkd

  # ---- 5. wait for bus name + routable ---------------------------------------------------------
  wait_ready "$t0"   # times include bus + netns setup
  trap - ERR; set +E
  cat <<EOF
export HARNESS_DIR=$DIR
export DBUS_SYSTEM_BUS_ADDRESS='$addr'
export HARNESS_NETNS=$NAME-host
export HARNESS_PEER_NETNS=$(cat "$DIR/peer.ns")
export HARNESS_PEER_IF=$(cat "$DIR/peer.if")
export HARNESS_UPLINK_OBJ=$(cat "$DIR/uplink.objpath")
export NETWORKD_PID=$(cat "$DIR/networkd.pid")
EOF
}

stop() {
  [ -n "$DIR" ] && [ -d "$DIR" ] || { log "usage: $0 stop DIR"; return 1; }
  local n; n=$(cat "$DIR/name" 2>/dev/null || true)
  for f in monitor.pid networkd.pid bus.pid; do kill_recorded "$DIR/$f"; done
  # Only what this instance made (a clashing NAME must not delete someone else's netns).
  if [ -f "$DIR/own-host-ns" ]; then ip netns del "$n-host" 2>/dev/null || true; fi  # takes uplink0's peer too
  if [ -f "$DIR/own-peer-ns" ]; then ip netns del "$(cat "$DIR/peer.ns")" 2>/dev/null || true; fi
  if [ -f "$DIR/own-switch-port" ]; then   # normally gone with uplink0; not if start failed half-way
    ip -n "$(cat "$DIR/peer.ns")" link del "$(cat "$DIR/peer.if")" 2>/dev/null || true
  fi
  rm -rf "$DIR"
  log "stopped and removed $DIR"
}

networkctl_in() { # args... (networkctl sees /run/systemd/netif only inside networkd's mount ns)
  nsenter -t "$(cat "$DIR/networkd.pid")" -m -n env DBUS_SYSTEM_BUS_ADDRESS="$(bus_addr)" \
      networkctl --no-pager "$@"
}

wait_prop() { # objpath property value timeout_s
  local deadline=$((SECONDS+$4))
  until [ "$(busctl --address="$DBUS_SYSTEM_BUS_ADDRESS" get-property org.freedesktop.network1 "$1" \
             org.freedesktop.network1.Link "$2" 2>/dev/null)" = "s \"$3\"" ]; do
    [ $SECONDS -lt $deadline ] || { log "timeout waiting for $2=$3"; return 1; }
    sleep 0.02
  done
  log "$2 == $3"
}

updown() { case "${1:-}" in up|down) ;; *) log "expected up|down, got '${1:-}'"; exit 2 ;; esac; }

demo() {
  DIR=$(mktemp -d /tmp/ndh.XXXXXX)
  trap 'stop' EXIT
  eval "$(start)"
  busctl --address="$DBUS_SYSTEM_BUS_ADDRESS" tree org.freedesktop.network1
  busctl --address="$DBUS_SYSTEM_BUS_ADDRESS" introspect org.freedesktop.network1 "$HARNESS_UPLINK_OBJ" \
      org.freedesktop.network1.Link | grep -E 'State|^NAME'
  # signal watcher (this is what fanlink subscribes to)
  busctl --address="$DBUS_SYSTEM_BUS_ADDRESS" monitor --match \
      "type='signal',sender='org.freedesktop.network1',interface='org.freedesktop.DBus.Properties',member='PropertiesChanged',arg0='org.freedesktop.network1.Link'" \
      >"$DIR/monitor.log" 2>&1 &
  echo $! > "$DIR/monitor.pid"; sleep 0.3
  log "dropping carrier (peer0 down)"; ip -n "$HARNESS_PEER_NETNS" link set "$HARNESS_PEER_IF" down
  wait_prop "$HARNESS_UPLINK_OBJ" OperationalState no-carrier 5
  log "restoring carrier (peer0 up)";  ip -n "$HARNESS_PEER_NETNS" link set "$HARNESS_PEER_IF" up
  wait_prop "$HARNESS_UPLINK_OBJ" OperationalState routable 5
  log "admin down inside the host netns"; ip -n "$HARNESS_NETNS" link set uplink0 down
  wait_prop "$HARNESS_UPLINK_OBJ" OperationalState off 5
  ip -n "$HARNESS_NETNS" link set uplink0 up
  wait_prop "$HARNESS_UPLINK_OBJ" OperationalState routable 5
  sleep 0.3
  log "PropertiesChanged signals seen for OperationalState:"
  grep -A2 '"OperationalState"' "$DIR/monitor.log" | grep -oE 'STRING "[a-z-]+"' | sed 's/STRING //' | paste -sd' ' >&2
  networkctl_in list >&2
}

case "$cmd" in
  start) start ;;
  stop)  stop ;;
  carrier) need_dir; updown "${3:-}"; ip -n "$(cat "$DIR/peer.ns")" link set "$(cat "$DIR/peer.if")" "$3" ;;
  link) need_dir; updown "${3:-}"; ip -n "$(cat "$DIR/name")-host" link set uplink0 "$3" ;;
  kill-networkd) need_dir; kill_recorded "$DIR/networkd.pid" ;;
  start-networkd) need_dir; t0=$(date +%s%N); start_networkd; wait_ready "$t0" ;;
  kill-bus) need_dir; kill_recorded "$DIR/bus.pid" ;;
  start-bus) need_dir; start_bus ;;
  set-address)
    need_dir; [ -n "${3:-}" ] || { log "usage: $0 set-address DIR ADDR/PREFIX"; exit 2; }
    write_network "$3" "${UPLINK_GW-$(cat "$DIR/uplink.gw")}"   # keeps the gateway unless UPLINK_GW is set
    networkctl_in reload; networkctl_in reconfigure uplink0 ;;
  reconfigure) need_dir; networkctl_in reload; networkctl_in reconfigure uplink0 ;;
  networkctl) need_dir; shift 2; networkctl_in "$@" ;;
  switch-up)
    [ -n "$DIR" ] || { log "usage: $0 switch-up NETNS"; exit 2; }
    ip netns add "$DIR"; ip -n "$DIR" link set lo up
    ip -n "$DIR" link add sw-br type bridge; ip -n "$DIR" link set sw-br up ;;
  switch-down) [ -n "$DIR" ] || { log "usage: $0 switch-down NETNS"; exit 2; }; ip netns del "$DIR" ;;
  demo)  demo ;;
  *) echo "usage: $0 {start [DIR]|stop DIR|carrier|link|kill-networkd|start-networkd|kill-bus|start-bus|set-address|reconfigure|networkctl|switch-up|switch-down|demo}" >&2; exit 2 ;;
esac
