//! The part of networkd's D-Bus API fanlink uses, declared once (trimmed from
//! `zbus-xmlgen` output against systemd 252). Only blocking proxies are generated: fanlink
//! has no async runtime of its own.

use zbus::zvariant::OwnedObjectPath;

/// `org.freedesktop.network1.Manager` at `/org/freedesktop/network1`.
#[zbus::proxy(
    interface = "org.freedesktop.network1.Manager",
    default_service = "org.freedesktop.network1",
    default_path = "/org/freedesktop/network1",
    gen_async = false,
    blocking_name = "ManagerProxy"
)]
pub trait Manager {
    /// Every link networkd knows: (ifindex, name, object path).
    fn list_links(&self) -> zbus::Result<Vec<(i32, String, OwnedObjectPath)>>;

    /// The name and object path of one link.
    fn get_link_by_index(&self, ifindex: i32) -> zbus::Result<(String, OwnedObjectPath)>;
}

/// `org.freedesktop.network1.Link` at `/org/freedesktop/network1/link/_3<ifindex>`.
/// All of these emit PropertiesChanged with their new values.
#[zbus::proxy(
    interface = "org.freedesktop.network1.Link",
    default_service = "org.freedesktop.network1",
    gen_async = false,
    blocking_name = "LinkProxy"
)]
pub trait Link {
    #[zbus(property)]
    fn operational_state(&self) -> zbus::Result<String>;

    #[zbus(property)]
    fn administrative_state(&self) -> zbus::Result<String>;

    #[zbus(property)]
    fn carrier_state(&self) -> zbus::Result<String>;

    #[zbus(property)]
    fn address_state(&self) -> zbus::Result<String>;

    #[zbus(property, name = "IPv4AddressState")]
    fn ipv4_address_state(&self) -> zbus::Result<String>;

    #[zbus(property, name = "IPv6AddressState")]
    fn ipv6_address_state(&self) -> zbus::Result<String>;

    #[zbus(property)]
    fn online_state(&self) -> zbus::Result<String>;
}
