//! Each fan's dnsmasq as the systemd unit `fanlink-dhcp@FAN.service`, started and stopped by
//! fanlink over the system bus. The unit (systemd/fanlink-dhcp@.service) runs dnsmasq with
//! the configuration file fanlink writes, `STATE_DIR/dhcp/FAN.conf`; those files are also
//! fanlink's record of which units it started, so a restarted daemon knows them without
//! asking systemd. The units outlive a restart of fanlink, as the fans do.

use super::{options, DhcpConfig};
use crate::ifname::IfName;
use crate::networkd::{Arg, Bus};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

pub struct Units {
    state_dir: PathBuf,
    /// The fans that have a configuration file, so a unit that may run.
    configured: HashSet<IfName>,
    /// Of those, the ones whose unit this daemon started or found running, with what: an
    /// unchanged fan costs no file read and no bus call on the next reconcile.
    started: HashMap<IfName, DhcpConfig>,
    /// The last error per fan, so that a lasting one is logged once.
    failed: HashMap<IfName, String>,
}

/// What systemd/fanlink-dhcp@.service runs.
const DNSMASQ: &str = "/usr/sbin/dnsmasq";

pub fn unit(fan: &IfName) -> String {
    format!("fanlink-dhcp@{fan}.service")
}

/// The configuration file of a fan's unit: its options, one per line.
pub fn conf(cfg: &DhcpConfig, state_dir: &Path) -> String {
    let mut text =
        format!("# Written by fanlink for {}: it is rewritten when the fan changes.\n", unit(&cfg.fan));
    for option in options(cfg, state_dir) {
        text.push_str(&option);
        text.push('\n');
    }
    text
}

impl Units {
    pub fn new(state_dir: PathBuf) -> Units {
        let configured = std::fs::read_dir(state_dir.join("dhcp"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".conf")?.parse().ok())
            .collect();
        Units { state_dir, configured, started: HashMap::new(), failed: HashMap::new() }
    }

    fn path(&self, fan: &IfName) -> PathBuf {
        self.state_dir.join("dhcp").join(format!("{fan}.conf"))
    }

    pub fn ensure(&mut self, cfg: DhcpConfig, bus: Option<&Bus>) {
        if self.started.get(&cfg.fan) == Some(&cfg) {
            return;
        }
        let Some(bus) = bus else { return };
        let text = conf(&cfg, &self.state_dir);
        let path = self.path(&cfg.fan);
        let same = std::fs::read_to_string(&path).is_ok_and(|old| old == text);
        let fan = cfg.fan.clone();
        let result = (|| {
            // The unit would fail to start, quietly for fanlink; the child path says the same.
            if !Path::new(DNSMASQ).exists() {
                return Err(format!("{DNSMASQ} is not installed; install dnsmasq-base"));
            }
            if !same {
                write(&path, &text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                self.configured.insert(fan.clone());
            }
            // A changed file takes a restart; an unchanged one a start, which leaves a unit
            // that runs (say, after fanlink restarted) as it is.
            manager(bus, if same { "StartUnit" } else { "RestartUnit" }, &unit(&fan))
        })();
        match result {
            Ok(()) => {
                let (first, last) = cfg.range;
                log::info!("{fan}: dhcp: {} serving {first}-{last}, mtu {}", unit(&fan), cfg.mtu);
                self.started.insert(fan.clone(), cfg.clone());
                self.failed.remove(&fan);
            }
            Err(e) => self.failure(&fan, e),
        }
    }

    pub fn retain(&mut self, keep: &[IfName], bus: Option<&Bus>) {
        let gone: Vec<IfName> = self.configured.iter().filter(|f| !keep.contains(f)).cloned().collect();
        let Some(bus) = bus else { return };
        for fan in gone {
            match manager(bus, "StopUnit", &unit(&fan)) {
                Ok(()) => {
                    let _ = std::fs::remove_file(self.path(&fan));
                    self.configured.remove(&fan);
                    self.started.remove(&fan);
                    self.failed.remove(&fan);
                    log::info!("{fan}: dhcp: {} stopped", unit(&fan));
                }
                Err(e) => self.failure(&fan, e),
            }
        }
    }

    fn failure(&mut self, fan: &IfName, error: String) {
        if self.failed.get(fan) != Some(&error) {
            log::error!("{fan}: dhcp: {error}");
            self.failed.insert(fan.clone(), error);
        }
    }

    pub fn serving(&self, fan: &IfName) -> Option<String> {
        self.started.contains_key(fan).then(|| unit(fan))
    }
}

/// Written whole or not at all: dnsmasq may be (re)started by systemd at any moment.
fn write(path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(path.parent().expect("a file in a directory"))?;
    let new = path.with_extension("conf.new");
    std::fs::write(&new, text)?;
    std::fs::rename(&new, path)
}

/// One of systemd's `Manager` job calls (StartUnit, RestartUnit, StopUnit) in "replace"
/// mode. It returns once the job is queued: nothing here waits for dnsmasq.
fn manager(bus: &Bus, method: &'static str, unit: &str) -> Result<(), String> {
    bus.call_method(
        "org.freedesktop.systemd1",
        "/org/freedesktop/systemd1",
        "org.freedesktop.systemd1.Manager",
        method,
        &[Arg::Str(unit), Arg::Str("replace")],
    )
    .map(|_| ())
    .map_err(|e| format!("systemd {method} {unit}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_units_configuration_is_the_fans_options_one_per_line() {
        let cfg = super::super::example();
        let text = conf(&cfg, Path::new("/var/lib/fanlink"));
        assert!(text.starts_with("# Written by fanlink for fanlink-dhcp@fan-250.service"), "{text}");
        for want in [
            "\ninterface=fan-250\nexcept-interface=lo\nbind-dynamic\n",
            "\ndhcp-range=250.3.4.2,250.3.4.127,255.0.0.0,1h\n",
            "\ndhcp-option=option:mtu,1450\n",
            "\ndhcp-leasefile=/var/lib/fanlink/fan-250.leases\n",
        ] {
            assert!(text.contains(want), "{want:?} in {text}");
        }
        // The unit's command line gives these; in the file they would be misread or refused.
        assert!(!text.contains("no-daemon") && !text.contains("conf-file"), "{text}");
    }

    #[test]
    fn a_restarted_daemon_knows_the_units_by_their_files() {
        let dir = std::env::temp_dir().join(format!("fanlink-units-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("dhcp")).unwrap();
        std::fs::write(dir.join("dhcp/fan-250.conf"), "").unwrap();
        std::fs::write(dir.join("dhcp/fan-250.conf.new"), "").unwrap();
        std::fs::write(dir.join("dhcp/not a fan!.conf"), "").unwrap();
        let units = Units::new(dir.clone());
        std::fs::remove_dir_all(&dir).unwrap();
        let names: Vec<String> = units.configured.iter().map(|f| f.to_string()).collect();
        assert_eq!(names, ["fan-250"]);
        // Known, but not started by this daemon yet: status does not claim it serves.
        assert_eq!(units.serving(&"fan-250".parse().unwrap()), None);
    }
}
