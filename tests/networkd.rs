//! The D-Bus edge against a real systemd-networkd and dbus-daemon (tests/harness): states,
//! restarts, bus loss, and forged signals. Root only; run with `--include-ignored`.
//!
//! No thread reads the bus: as the daemon's poll loop does, these tests poll the
//! connection's socket and pump it while they wait (`recv`, `pumped`).

use std::sync::atomic::Ordering;
use std::sync::mpsc::{channel, Receiver, TryRecvError};
use std::time::{Duration, Instant};

use fanlink::networkd::{attach, AdminState, Attached, BusEvent, LinkState, Networkd, OperState};

use crate::util::{wait_for, Harness};

/// Generous: networkd reacts within ~100 ms, but CI machines have 2 busy cores.
const WITHIN: Duration = Duration::from_secs(10);

fn uplink(links: &[LinkState]) -> &LinkState {
    links.iter().find(|l| l.name.as_str() == "uplink0").unwrap_or_else(|| panic!("no uplink0 in {links:?}"))
}

fn attached(h: &Harness) -> (Attached, Receiver<BusEvent>, u32) {
    // RUST_LOG=debug shows each dropped message, escaped.
    let _ = env_logger::builder().is_test(true).try_init();
    let (tx, rx) = channel();
    let t0 = Instant::now();
    let a = attach(Some(h.bus()), tx, |_| false).expect("attach");
    eprintln!("[test] attach (connect, subscribe, reader, snapshot) took {} ms", t0.elapsed().as_millis());
    let index = uplink(a.links.as_deref().expect("networkd is on the bus")).index;
    (a, rx, index)
}

/// Pumps `networkd` until an event that `want` accepts is delivered on `rx`; returns it and
/// the events before it.
pub fn recv(
    networkd: &Networkd,
    rx: &Receiver<BusEvent>,
    what: &str,
    want: impl Fn(&BusEvent) -> bool,
) -> (BusEvent, Vec<BusEvent>) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let deadline = Instant::now() + WITHIN;
    let mut seen = Vec::new();
    loop {
        networkd.pump();
        for event in rx.try_iter() {
            if want(&event) {
                return (event, seen);
            }
            seen.push(event);
        }
        assert!(Instant::now() < deadline, "no {what} within {WITHIN:?}; seen: {seen:?}");
        match networkd.fd() {
            Some(fd) => {
                let _ = poll(&mut [PollFd::new(fd, PollFlags::POLLIN)], PollTimeout::from(50u8));
            }
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// Pumps `networkd`, then says whether `cond` holds (for `wait_for`).
fn pumped<'a>(networkd: &'a Networkd, cond: impl Fn() -> bool + 'a) -> impl FnMut() -> bool + 'a {
    move || {
        networkd.pump();
        cond()
    }
}

pub fn oper_of(index: u32, want: OperState) -> impl Fn(&BusEvent) -> bool {
    move |e| matches!(e, BusEvent::LinkChanged { index: i, oper: Some(o), .. } if *i == index && *o == want)
}

#[test]
#[ignore = "needs root and systemd-networkd: run with --include-ignored"]
fn snapshot_shows_uplink_routable() {
    let h = Harness::start("snap");
    let (a, _rx, index) = attached(&h);
    let links = a.links.as_deref().unwrap();
    let up = uplink(links);
    assert_eq!((up.oper, up.admin), (OperState::Routable, AdminState::Configured), "{links:?}");
    assert_eq!(h.var("HARNESS_UPLINK_OBJ"), fanlink::networkd::link_path(index));
    let lo = links.iter().find(|l| l.name.as_str() == "lo").expect("lo listed");
    assert_eq!(lo.admin, AdminState::Unmanaged);
    assert!(a.networkd.owner().unwrap().is_some());
    assert_eq!(a.networkd.link(index).unwrap().as_ref(), Some(up));
    assert_eq!(a.networkd.link(9999).unwrap(), None);
}

#[test]
#[ignore = "needs root and systemd-networkd: run with --include-ignored"]
fn a_snapshot_of_a_host_with_hundreds_of_links_has_them_all() {
    // A container host: networkd lists every veth, and the snapshot asks two Gets of each,
    // pipelined (more than dbus-daemon lets one connection await at once, 128 by default).
    let h = Harness::start("many");
    const N: usize = 150;
    let batch: String = (0..N).map(|i| format!("link add flmany{i} type bridge\n")).collect();
    let mut ip = std::process::Command::new("ip")
        .args(["-n", h.var("HARNESS_NETNS"), "-batch", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(ip.stdin.as_mut().unwrap(), batch.as_bytes()).unwrap();
    drop(ip.stdin.take());
    assert!(ip.wait().unwrap().success());
    let (a, _rx, index) = attached(&h);
    let count = |links: &[LinkState]| links.iter().filter(|l| l.name.as_str().starts_with("flmany")).count();
    // networkd may not list the newest links yet: it learns them from the kernel too.
    wait_for(WITHIN, "networkd to list every extra link", || {
        count(&a.networkd.snapshot(|_| false).expect("snapshot")) == N
    });
    let t0 = Instant::now();
    let links = a.networkd.snapshot(|_| false).expect("snapshot");
    eprintln!("[test] snapshot of {} links took {} ms", links.len(), t0.elapsed().as_millis());
    assert_eq!(count(&links), N);
    assert!(links
        .iter()
        .filter(|l| l.name.as_str().starts_with("flmany"))
        .all(|l| l.admin == AdminState::Unmanaged));
    assert_eq!(uplink(&links).oper, OperState::Routable);
    // Skipped links are not asked about, the others still are.
    let fewer = a.networkd.snapshot(|i| i != index).expect("snapshot");
    assert_eq!(fewer.iter().map(|l| l.index).collect::<Vec<_>>(), [index]);
}

#[test]
#[ignore = "needs root and systemd-networkd: run with --include-ignored"]
fn carrier_loss_and_back() {
    let h = Harness::start("carrier");
    let (a, rx, index) = attached(&h);
    let t0 = Instant::now();
    h.run("carrier", &["down"]);
    recv(&a.networkd, &rx, "no-carrier", oper_of(index, OperState::NoCarrier));
    eprintln!("[test] no-carrier seen {} ms after peer down", t0.elapsed().as_millis());
    let t0 = Instant::now();
    h.run("carrier", &["up"]);
    recv(&a.networkd, &rx, "routable", oper_of(index, OperState::Routable));
    eprintln!("[test] routable seen {} ms after peer up", t0.elapsed().as_millis());
    assert_eq!(a.networkd.dropped(), 0);
}

#[test]
#[ignore = "needs root and systemd-networkd: run with --include-ignored"]
fn uplink_down_is_off() {
    let h = Harness::start("off");
    let (a, rx, index) = attached(&h);
    h.run("link", &["down"]);
    recv(&a.networkd, &rx, "off", oper_of(index, OperState::Off));
    h.run("link", &["up"]);
    recv(&a.networkd, &rx, "routable", oper_of(index, OperState::Routable));
}

#[test]
#[ignore = "needs root and systemd-networkd: run with --include-ignored"]
fn networkd_restart_changes_owner() {
    let h = Harness::start("restart");
    let (a, rx, index) = attached(&h);
    let before = a.networkd.owner().unwrap();
    h.run("kill-networkd", &[]);
    recv(&a.networkd, &rx, "owner gone", |e| *e == BusEvent::OwnerChanged { new_owner: None });
    assert_eq!(a.networkd.owner().unwrap(), None);
    assert!(a.networkd.snapshot(|_| false).is_err(), "a snapshot without networkd must fail, not be empty");

    h.run("start-networkd", &[]);
    let (event, _) =
        recv(&a.networkd, &rx, "new owner", |e| matches!(e, BusEvent::OwnerChanged { new_owner: Some(_) }));
    let now = a.networkd.owner().unwrap();
    assert_eq!(event, BusEvent::OwnerChanged { new_owner: now.clone() });
    assert_ne!(now, before);
    let links = a.networkd.snapshot(|_| false).expect("snapshot after restart");
    assert_eq!(uplink(&links).oper, OperState::Routable);

    // The reader now trusts the new owner (and only it).
    h.run("carrier", &["down"]);
    recv(&a.networkd, &rx, "no-carrier from the new networkd", oper_of(index, OperState::NoCarrier));
    assert_eq!(a.networkd.dropped(), 0);
}

#[test]
#[ignore = "needs root and systemd-networkd: run with --include-ignored"]
fn forged_signals_are_dropped() {
    let h = Harness::start("forge");
    let (a, rx, index) = attached(&h);
    let me = a.networkd.unique_name().expect("a unique name");
    let link = fanlink::networkd::link_path(index);
    let pc = |dest: Option<&str>, path: &str, iface: &str, prop: &str, sig: &str, value: &str| {
        let mut args = vec![];
        let to = dest.map(|d| format!("--destination={d}"));
        args.extend(to.as_deref());
        args.extend(["emit", path, "org.freedesktop.DBus.Properties", "PropertiesChanged", "sa{sv}as"]);
        args.extend([iface, "1", prop, sig, value, "0"]);
        h.busctl(&args);
    };
    let link1 = "org.freedesktop.network1.Link";
    // Broadcasts: the bus's sender='org.freedesktop.network1' filter keeps them from us.
    pc(None, &link, link1, "OperationalState", "s", "off");
    pc(None, &link, link1, "OperationalState", "s", "../../x");
    // Addressed to us, a signal passes every match rule: the reader must drop them itself.
    // (A "../" path cannot even be sent: D-Bus object paths have no "." elements.)
    let directed = [
        (link.as_str(), link1, "OperationalState", "s", "off"),
        (link.as_str(), link1, "OperationalState", "s", "../../x"),
        (link.as_str(), link1, "OperationalState", "i", "5"),
        (link.as_str(), link1, "AdministrativeState", "b", "true"),
        ("/org/freedesktop/network1/network/_32", link1, "OperationalState", "s", "off"),
        ("/org/freedesktop/network1/link/_32/x", link1, "OperationalState", "s", "off"),
        ("/tmp/x", link1, "OperationalState", "s", "off"),
        (link.as_str(), "org.freedesktop.network1.Network", "OperationalState", "s", "off"),
    ];
    let base = a.networkd.dropped();
    for (path, iface, prop, sig, value) in directed {
        pc(Some(&me), path, iface, prop, sig, value);
    }
    h.busctl(&[&format!("--destination={me}"), "emit", &link, "org.example.Evil", "Boo", "s", "x"]);
    // A forged NameOwnerChanged claiming networkd's name, then a signal from the "new owner".
    h.busctl(&[
        &format!("--destination={me}"),
        "emit",
        "/org/freedesktop/DBus",
        "org.freedesktop.DBus",
        "NameOwnerChanged",
        "sss",
        "org.freedesktop.network1",
        "",
        ":1.999",
    ]);
    pc(Some(&me), &link, link1, "OperationalState", "s", "off");
    let forged = directed.len() as u64 + 3;
    let stats = a.networkd.stats();
    wait_for(
        WITHIN,
        "every forgery to be dropped",
        pumped(&a.networkd, || stats.dropped.load(Ordering::Relaxed) >= base + forged),
    );
    assert_eq!(a.networkd.dropped(), base + forged);
    eprintln!("[test] dropped {base} before the forgeries, {} after", a.networkd.dropped());
    // Those on a link path put the owner in doubt (a lost NameOwnerChanged looks the same);
    // asking the bus clears it, and nothing else got through.
    let events: Vec<BusEvent> = rx.try_iter().collect();
    assert!(events.iter().all(|e| *e == BusEvent::OwnerInDoubt), "a forgery got through: {events:?}");
    assert!(!events.is_empty(), "a signal on networkd's link path from a stranger raised no doubt");
    let check = a.networkd.recheck_owner().unwrap();
    assert!(!check.changed && check.owner.as_deref() != Some(":1.999"), "{check:?}");

    // Still listening to the real networkd, which still owns its name.
    h.run("carrier", &["down"]);
    let (_, before) = recv(&a.networkd, &rx, "real no-carrier", oper_of(index, OperState::NoCarrier));
    assert!(
        before.iter().all(|e| matches!(e, BusEvent::LinkChanged { index: i, .. } if *i == index)),
        "{before:?}"
    );
    assert!(a.networkd.owner().unwrap().is_some_and(|o| o != ":1.999"));
}

#[test]
#[ignore = "needs root and systemd-networkd: run with --include-ignored"]
fn bus_restart_disconnects_and_reattach_works() {
    let h = Harness::start("busloss");
    let (a, rx, _) = attached(&h);
    h.run("kill-bus", &[]);
    recv(&a.networkd, &rx, "Disconnected", |e| *e == BusEvent::Disconnected);
    assert!(a.networkd.fd().is_none(), "an ended connection is still polled");

    // networkd (sd-bus) does not reconnect to a new bus by itself: restart it as the
    // daemon's operator would, then attach again as the daemon does after Disconnected.
    h.run("start-bus", &[]);
    h.run("kill-networkd", &[]);
    h.run("start-networkd", &[]);
    let (tx, rx) = channel::<BusEvent>();
    let Attached { networkd, links } =
        attach(Some(h.bus()), tx, |_| false).expect("attach after the bus came back");
    assert_eq!(uplink(&links.unwrap()).oper, OperState::Routable);
    // Hanging up ourselves ends the connection without a Disconnected (no reconnect loop).
    networkd.close().unwrap();
    assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
}

#[test]
#[ignore = "needs root and systemd-networkd: run with --include-ignored"]
fn attach_before_networkd_is_on_the_bus_then_follow_it_when_it_comes() {
    let h = Harness::start("early");
    h.run("kill-networkd", &[]);
    let (tx, rx) = channel::<BusEvent>();
    let a = attach(Some(h.bus()), tx, |_| false).expect("attach while networkd is not on the bus");
    assert!(a.links.is_none(), "{:?}", a.links);
    h.run("start-networkd", &[]);
    recv(&a.networkd, &rx, "networkd's arrival", |e| {
        matches!(e, BusEvent::OwnerChanged { new_owner: Some(_) })
    });
    assert_eq!(uplink(&a.networkd.snapshot(|_| false).unwrap()).oper, OperState::Routable);
}

#[test]
#[ignore = "needs root and systemd-networkd: run with --include-ignored"]
fn connect_honours_dbus_system_bus_address() {
    let h = Harness::start("env");
    // Only this test touches the variable; the others pass the address explicitly.
    std::env::set_var("DBUS_SYSTEM_BUS_ADDRESS", h.bus());
    let bus = Networkd::connect().expect("connect via DBUS_SYSTEM_BUS_ADDRESS");
    std::env::remove_var("DBUS_SYSTEM_BUS_ADDRESS");
    assert!(bus.owner().unwrap().is_some());
}

#[test]
#[ignore = "needs root and systemd-networkd: run with --include-ignored"]
fn two_hosts_on_one_switch() {
    let switch = format!("flsw{}", std::process::id());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/harness/networkd-harness.sh");
    let up = std::process::Command::new("bash").args([script, "switch-up", &switch]).status().unwrap();
    assert!(up.success());
    struct Switch<'a>(&'a str, &'a str);
    impl Drop for Switch<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("bash").args([self.1, "switch-down", self.0]).status();
        }
    }
    let _switch = Switch(&switch, script);
    let knobs = |addr| [("SWITCH_NS", switch.as_str()), ("UPLINK_ADDR", addr), ("UPLINK_GW", "")];
    let a = Harness::start_with("swa", &knobs("10.99.2.1/24"));
    let b = Harness::start_with("swb", &knobs("10.99.2.2/24"));
    let (sa, rxa, ia) = attached(&a);
    let (sb, rxb, ib) = attached(&b);
    assert_eq!(uplink(sa.links.as_deref().unwrap()).oper, OperState::Routable);
    assert_eq!(uplink(sb.links.as_deref().unwrap()).oper, OperState::Routable);
    // Each host's events are its own: B's switch port going down reaches only B.
    b.run("carrier", &["down"]);
    recv(&sb.networkd, &rxb, "no-carrier on host B", oper_of(ib, OperState::NoCarrier));
    sa.networkd.pump();
    assert_eq!(rxa.try_recv(), Err(TryRecvError::Empty), "host A saw B's carrier loss");
    a.run("carrier", &["down"]);
    recv(&sa.networkd, &rxa, "no-carrier on host A", oper_of(ia, OperState::NoCarrier));
}

#[test]
#[ignore = "needs root and systemd-networkd: run with --include-ignored"]
fn garbage_from_the_owner_is_dropped_or_unknown() {
    use std::collections::HashMap;
    use zbus::zvariant::Value;

    let h = Harness::start("garbage");
    let (a, rx, index) = attached(&h);
    // Stand in for networkd (the harness bus lets anyone own the name) so that the checks
    // behind the sender check are reached on a real bus.
    h.run("kill-networkd", &[]);
    recv(&a.networkd, &rx, "owner gone", |e| *e == BusEvent::OwnerChanged { new_owner: None });
    let fake = zbus::blocking::connection::Builder::address(h.bus())
        .unwrap()
        .name("org.freedesktop.network1")
        .unwrap()
        .build()
        .expect("the fake networkd takes the name");
    let fake_name = fake.unique_name().unwrap().to_string();
    recv(&a.networkd, &rx, "fake owner", |e| {
        *e == BusEvent::OwnerChanged { new_owner: Some(fake_name.clone()) }
    });

    let link = fanlink::networkd::link_path(index);
    let emit = |path: &str, iface: &str, props: &[(&str, Value<'_>)]| {
        let props: HashMap<&str, &Value<'_>> = props.iter().map(|(k, v)| (*k, v)).collect();
        let body = (iface, props, Vec::<&str>::new());
        fake.emit_signal(None::<()>, path, "org.freedesktop.DBus.Properties", "PropertiesChanged", &body)
            .unwrap();
    };
    let link1 = "org.freedesktop.network1.Link";
    let base = a.networkd.dropped();
    emit(&link, link1, &[("OperationalState", Value::I32(5))]);
    emit(&link, link1, &[("OperationalState", Value::new(Value::from("routable")))]);
    emit(&link, link1, &[("AdministrativeState", Value::Bool(true))]);
    emit("/org/freedesktop/network1/link/_30", link1, &[("OperationalState", "routable".into())]);
    emit("/org/freedesktop/network1/link/_32/x", link1, &[("OperationalState", "routable".into())]);
    let stats = a.networkd.stats();
    wait_for(
        WITHIN,
        "the garbage to be dropped",
        pumped(&a.networkd, || stats.dropped.load(Ordering::Relaxed) >= base + 5),
    );
    // The bus's arg0 filter keeps this one from us; were it delivered, it would be the
    // LinkChanged the next step finds (one sender's messages keep their order).
    emit(&link, "org.freedesktop.network1.Network", &[("OperationalState", "routable".into())]);
    a.networkd.pump();
    assert_eq!(rx.try_recv(), Err(TryRecvError::Empty), "garbage got through");

    // A well-formed but unknown state is delivered, as Unknown (never routable).
    emit(&link, link1, &[("OperationalState", "../../x".into())]);
    let (event, _) =
        recv(&a.networkd, &rx, "the unknown state", |e| matches!(e, BusEvent::LinkChanged { .. }));
    assert_eq!(event, BusEvent::LinkChanged { index, oper: Some(OperState::Unknown), admin: None });
    assert_eq!(a.networkd.dropped(), base + 5);
}

#[test]
#[ignore = "needs root and systemd-networkd: run with --include-ignored"]
fn reconfigure_passes_through_carrier() {
    let h = Harness::start("reconf");
    let (a, rx, index) = attached(&h);
    // A reconfigure (here: a new address) drops the link's addresses first: oper goes
    // routable -> carrier -> routable within milliseconds. The daemon must expect it.
    h.run("set-address", &["10.99.1.7/24"]);
    recv(&a.networkd, &rx, "carrier while reconfiguring", oper_of(index, OperState::Carrier));
    recv(&a.networkd, &rx, "routable again", oper_of(index, OperState::Routable));
    recv(
        &a.networkd,
        &rx,
        "configured",
        |e| matches!(e, BusEvent::LinkChanged { index: i, admin: Some(AdminState::Configured), .. } if *i == index),
    );
    // The signals can run ahead of the address itself under load: wait for it.
    wait_for(WITHIN, "the new address on uplink0", || {
        let out = std::process::Command::new("ip")
            .args(["-n", h.var("HARNESS_NETNS"), "-4", "-o", "addr", "show", "dev", "uplink0"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains("10.99.1.7/24")
    });
    assert_eq!(a.networkd.dropped(), 0);
}

#[test]
#[ignore = "needs root and systemd-networkd: run with --include-ignored"]
fn a_flood_of_forgeries_neither_stalls_calls_nor_gets_through() {
    use std::collections::HashMap;
    use zbus::zvariant::Value;

    let h = Harness::start("flood");
    let (a, rx, index) = attached(&h);
    let me = a.networkd.unique_name().unwrap();
    let forger = zbus::blocking::connection::Builder::address(h.bus()).unwrap().build().unwrap();
    const N: u64 = 5_000; // far more than the queue holds (16), had the reader stalled
    let link = fanlink::networkd::link_path(index);
    let flood = std::thread::spawn(move || {
        let props = HashMap::from([("OperationalState", Value::from("off"))]);
        let body = ("org.freedesktop.network1.Link", props, Vec::<&str>::new());
        for _ in 0..N {
            forger
                .emit_signal(
                    Some(me.as_str()),
                    link.as_str(),
                    "org.freedesktop.DBus.Properties",
                    "PropertiesChanged",
                    &body,
                )
                .unwrap();
        }
    });
    // Method calls share the connection with the flooded queue; they must keep working, each
    // answered promptly (a call stalled behind the flood waits out its 25 s timeout).
    let t0 = Instant::now();
    let (mut snapshots, mut slowest) = (0, Duration::ZERO);
    while !flood.is_finished() {
        let t = Instant::now();
        let snapshot = a.networkd.snapshot(|_| false).expect("snapshot during the flood");
        // Taken while the flood went on: a snapshot that ends after the flood proves nothing.
        if !flood.is_finished() {
            snapshots += 1;
            slowest = slowest.max(t.elapsed());
        }
        assert_eq!(uplink(&snapshot).oper, OperState::Routable);
    }
    flood.join().unwrap();
    assert!(snapshots >= 3, "only {snapshots} snapshot(s) during the flood");
    assert!(slowest < Duration::from_secs(2), "a snapshot during the flood took {slowest:?}");
    let stats = a.networkd.stats();
    wait_for(
        WITHIN,
        "every forgery to be dropped",
        pumped(&a.networkd, || stats.dropped.load(Ordering::Relaxed) >= N),
    );
    eprintln!(
        "[test] {N} forgeries dropped in {} ms, {snapshots} snapshots meanwhile (slowest {slowest:?})",
        t0.elapsed().as_millis()
    );
    assert_eq!(a.networkd.dropped(), N);
    let events: Vec<BusEvent> = rx.try_iter().collect();
    assert!(events.iter().all(|e| *e == BusEvent::OwnerInDoubt), "a forgery got through: {events:?}");
    assert!(!a.networkd.recheck_owner().unwrap().changed);
}

#[test]
#[ignore = "needs root and systemd-networkd: run with --include-ignored"]
fn a_giant_message_is_dropped_unread_and_reported_as_a_loss() {
    let h = Harness::start("giant");
    let (a, rx, index) = attached(&h);
    let me = a.networkd.unique_name().unwrap();
    // Issue 24's flood: signals far larger than anything fanlink is sent fill the bus's queue
    // for it, and the bus then drops networkd's own signals. Each one is a sign of that.
    let forger = zbus::blocking::connection::Builder::address(h.bus()).unwrap().build().unwrap();
    let giant = vec![0u8; 2 << 20];
    forger.emit_signal(Some(me.as_str()), "/org/example", "org.example.Flood", "Giant", &giant).unwrap();
    let (_, before) = recv(&a.networkd, &rx, "Lost", |e| *e == BusEvent::Lost);
    assert!(before.is_empty(), "{before:?}");
    assert_eq!(a.networkd.dropped(), 1);
    // The stream kept its framing: networkd's next signal is read as ever.
    h.run("carrier", &["down"]);
    recv(&a.networkd, &rx, "no-carrier after the giant", oper_of(index, OperState::NoCarrier));
}
