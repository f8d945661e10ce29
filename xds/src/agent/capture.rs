//! Transparent capture: the netfilter rules that send a pod's TCP traffic through its sidecar
//! (what Istio's `istio-iptables` sets up in the `istio-init` container). Pure: a
//! [`CaptureConfig`] in, the rule text for `iptables-restore --noflush` (and `ip6tables-restore`
//! when IPv6 is captured) and, for TPROXY, the policy-routing commands out. Applying them is the
//! CLI's job (`rudder proxy init`).
//!
//! The layout follows istio-iptables' so that anyone who has debugged an Istio pod recognises it
//! in `iptables-save`:
//!
//! * `nat` `ISTIO_OUTPUT` (from `OUTPUT`, TCP): traffic the application sends. The proxy's own
//!   traffic (its uid or gid) is left alone, except when it talks to the pod's own non-loopback
//!   address over `lo`, which goes to the inbound port (`ISTIO_IN_REDIRECT`) so that calls to
//!   oneself are treated as inbound too. Envoy's inbound passthrough, which connects to the
//!   application from `127.0.0.6`, is returned first. Everything else, subject to the
//!   include/exclude ranges and ports, goes to `ISTIO_REDIRECT` (the outbound port).
//! * REDIRECT mode: `nat` `ISTIO_INBOUND` (from `PREROUTING`) sends arriving TCP to the inbound
//!   port except the excluded ports.
//! * TPROXY mode: inbound uses `mangle` instead: `ISTIO_INBOUND` hands new connections to the
//!   `TPROXY` target (`ISTIO_TPROXY`, which marks them [`PROXY_MARK`]) and packets of
//!   connections the proxy already owns (`-m socket --transparent`) to `ISTIO_DIVERT`, which
//!   marks and accepts them. A policy route (`fwmark 1337 lookup 133`, `local default dev lo
//!   table 133`) delivers marked packets locally. Outbound stays `nat` REDIRECT.
//! * DNS capture (Rudder's default): UDP and TCP to port 53 from anyone but the proxy go to the
//!   agent's DNS port ([`DEFAULT_DNS_PORT`], on 127.0.0.1 / ::1). The proxy's own lookups are
//!   returned before the redirect, so its upstream queries are not looped back to itself.
//!   `raw` puts the two kinds of DNS flows in separate conntrack zones: the proxy's own lookups
//!   and their answers in zone [`PROXY_DNS_ZONE`], the application's captured queries and the
//!   agent's answers in zone [`APP_DNS_ZONE`]. Without them, an application query that happens
//!   to leave from a source port the proxy used a moment earlier for the same nameserver
//!   matches the proxy's live conntrack entry, which was never redirected, and bypasses the
//!   agent (a rare `could not resolve host` for a mesh name). The kernel keeps the first zone a
//!   packet is given, so the specific rules come first.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use crate::model::InterceptionMode;

/// The agent's DNS port: captured DNS goes here (127.0.0.1 for IPv4, ::1 for IPv6).
pub const DEFAULT_DNS_PORT: u16 = 15053;
/// Conntrack zone of the proxy's own DNS lookups to the upstream nameservers.
pub const PROXY_DNS_ZONE: u16 = 1;
/// Conntrack zone of the application's DNS queries, redirected to the agent.
pub const APP_DNS_ZONE: u16 = 2;
/// The firewall mark of TPROXY'd packets (Istio's 1337, `0x539`).
pub const PROXY_MARK: u32 = 1337;
/// The routing table that delivers marked packets locally in TPROXY mode.
pub const TPROXY_ROUTE_TABLE: u32 = 133;
/// The source address Envoy's inbound passthrough uses to reach the application.
const PASSTHROUGH_V4: &str = "127.0.0.6/32";
const PASSTHROUGH_V6: &str = "::6/128";

/// An address range (`10.0.0.0/8`, `fd00::/8`; a bare address is a /32 or /128).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    pub address: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn is_ipv6(&self) -> bool {
        self.address.is_ipv6()
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address: IpAddr = address.parse().map_err(|_| format!("{address:?} is not an IP address"))?;
        let max = if address.is_ipv6() { 128 } else { 32 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => return Err(format!("prefix length {p:?} is not a number from 0 to {max}")),
            },
        };
        Ok(Self { address, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

/// A network interface name, checked so that it cannot break the rule text (at most 15
/// characters of `A-Za-z0-9._-`, plus iptables' trailing `+` wildcard).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Interface(String);

impl Interface {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Interface {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let body = text.strip_suffix('+').unwrap_or(text);
        let valid = !body.is_empty()
            && text.len() <= 15
            && body.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if valid {
            Ok(Self(text.to_owned()))
        } else {
            Err("is not an interface name (1-15 characters of A-Z a-z 0-9 . _ -, optionally ending in +)".to_owned())
        }
    }
}

impl fmt::Display for Interface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which outbound destinations are captured: all (`*`) or the listed ranges.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum IpRanges {
    #[default]
    All,
    Only(Vec<Cidr>),
}

/// Which inbound ports are captured: all (`*`, minus the excluded ones) or the listed ports.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Ports {
    #[default]
    All,
    Only(Vec<u16>),
}

/// Everything that decides the capture rules. [`CaptureConfig::from_flags`] builds it from the
/// init container's flags; [`Default`] is what the injector passes by default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaptureConfig {
    pub mode: InterceptionMode,
    /// Where outbound TCP is redirected (Envoy's virtual outbound listener).
    pub outbound_port: u16,
    /// Where inbound TCP is redirected (Envoy's virtual inbound listener).
    pub inbound_port: u16,
    /// The proxy's user and group: their traffic is not captured.
    pub proxy_uid: u32,
    pub proxy_gid: u32,
    pub include_ip_ranges: IpRanges,
    pub exclude_ip_ranges: Vec<Cidr>,
    pub include_inbound_ports: Ports,
    pub exclude_inbound_ports: Vec<u16>,
    /// Outbound ports captured whatever the destination address.
    pub include_outbound_ports: Vec<u16>,
    pub exclude_outbound_ports: Vec<u16>,
    /// Interfaces whose arriving traffic is treated as outbound (KubeVirt VMs).
    pub reroute_interfaces: Vec<Interface>,
    /// Interfaces whose traffic is never captured.
    pub exclude_interfaces: Vec<Interface>,
    /// Send DNS (port 53, UDP and TCP) from the application to the agent's DNS port.
    pub redirect_dns: bool,
    pub dns_port: u16,
    /// Also write IPv6 rules (for `ip6tables-restore`). They are written anyway when an
    /// include or exclude range is IPv6.
    pub ipv6: bool,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        Self {
            mode: InterceptionMode::Redirect,
            outbound_port: 15001,
            inbound_port: 15006,
            proxy_uid: 1337,
            proxy_gid: 1337,
            include_ip_ranges: IpRanges::All,
            exclude_ip_ranges: Vec::new(),
            include_inbound_ports: Ports::All,
            exclude_inbound_ports: Vec::new(),
            include_outbound_ports: Vec::new(),
            exclude_outbound_ports: Vec::new(),
            reroute_interfaces: Vec::new(),
            exclude_interfaces: Vec::new(),
            redirect_dns: true,
            dns_port: DEFAULT_DNS_PORT,
            ipv6: false,
        }
    }
}

/// The list-valued flags as the init container passes them (comma-separated text; `*` means
/// all where allowed). Each field is named after its istio-iptables short flag.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CaptureFlags {
    /// `-i`: outbound IP ranges to capture.
    pub include_ip_ranges: String,
    /// `-x`: outbound IP ranges not to capture.
    pub exclude_ip_ranges: String,
    /// `-b`: inbound ports to capture.
    pub include_inbound_ports: String,
    /// `-d`: inbound ports not to capture.
    pub exclude_inbound_ports: String,
    /// `-q`: outbound ports to capture.
    pub include_outbound_ports: String,
    /// `-o`: outbound ports not to capture.
    pub exclude_outbound_ports: String,
    /// `-k`: interfaces rerouted as outbound.
    pub reroute_interfaces: String,
    /// `-c`: interfaces left alone.
    pub exclude_interfaces: String,
}

/// A flag whose value cannot be used; nothing has been applied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{flag} ({what}): {value:?} {reason}")]
pub struct CaptureError {
    /// The flag, e.g. `-d`.
    pub flag: &'static str,
    /// What the flag means, e.g. `inbound ports not to capture`.
    pub what: &'static str,
    /// The offending item.
    pub value: String,
    pub reason: String,
}

fn items(text: &str) -> impl Iterator<Item = &str> {
    text.split(',').map(str::trim).filter(|s| !s.is_empty())
}

fn error(flag: &'static str, what: &'static str, value: &str, reason: impl Into<String>) -> CaptureError {
    CaptureError { flag, what, value: value.to_owned(), reason: reason.into() }
}

/// A comma-separated list of ports (1-65535).
pub fn parse_ports(flag: &'static str, what: &'static str, text: &str) -> Result<Vec<u16>, CaptureError> {
    items(text)
        .map(|item| match item.parse::<u16>() {
            Ok(port) if port > 0 => Ok(port),
            _ => Err(error(flag, what, item, "is not a port number (1-65535)")),
        })
        .collect()
}

/// `*` (all ports) or a list of ports; empty means none.
pub fn parse_port_set(flag: &'static str, what: &'static str, text: &str) -> Result<Ports, CaptureError> {
    if items(text).any(|item| item == "*") {
        return Ok(Ports::All);
    }
    parse_ports(flag, what, text).map(Ports::Only)
}

/// A comma-separated list of CIDRs (or bare addresses).
pub fn parse_cidrs(flag: &'static str, what: &'static str, text: &str) -> Result<Vec<Cidr>, CaptureError> {
    items(text).map(|item| item.parse().map_err(|reason| error(flag, what, item, reason))).collect()
}

/// `*` (everything) or a list of CIDRs; empty means none.
pub fn parse_ip_ranges(flag: &'static str, what: &'static str, text: &str) -> Result<IpRanges, CaptureError> {
    if items(text).any(|item| item == "*") {
        return Ok(IpRanges::All);
    }
    parse_cidrs(flag, what, text).map(IpRanges::Only)
}

/// A comma-separated list of interface names.
pub fn parse_interfaces(flag: &'static str, what: &'static str, text: &str) -> Result<Vec<Interface>, CaptureError> {
    items(text).map(|item| item.parse().map_err(|reason| error(flag, what, item, reason))).collect()
}

impl CaptureConfig {
    /// `base` (mode, ports, uid/gid, DNS, IPv6) with the list flags parsed into it. The first
    /// bad item is reported with the flag it came from.
    pub fn from_flags(base: Self, flags: &CaptureFlags) -> Result<Self, CaptureError> {
        Ok(Self {
            include_ip_ranges: parse_ip_ranges("-i", "outbound IP ranges to capture", &flags.include_ip_ranges)?,
            exclude_ip_ranges: parse_cidrs("-x", "outbound IP ranges not to capture", &flags.exclude_ip_ranges)?,
            include_inbound_ports: parse_port_set("-b", "inbound ports to capture", &flags.include_inbound_ports)?,
            exclude_inbound_ports: parse_ports("-d", "inbound ports not to capture", &flags.exclude_inbound_ports)?,
            include_outbound_ports: parse_ports("-q", "outbound ports to capture", &flags.include_outbound_ports)?,
            exclude_outbound_ports: parse_ports("-o", "outbound ports not to capture", &flags.exclude_outbound_ports)?,
            reroute_interfaces: parse_interfaces("-k", "interfaces rerouted as outbound", &flags.reroute_interfaces)?,
            exclude_interfaces: parse_interfaces("-c", "interfaces not captured", &flags.exclude_interfaces)?,
            ..base
        })
    }

    /// Whether IPv6 rules are written: asked for, or an IPv6 range is named.
    pub fn captures_ipv6(&self) -> bool {
        let included = match &self.include_ip_ranges {
            IpRanges::All => false,
            IpRanges::Only(ranges) => ranges.iter().any(Cidr::is_ipv6),
        };
        self.mode != InterceptionMode::None
            && (self.ipv6 || included || self.exclude_ip_ranges.iter().any(Cidr::is_ipv6))
    }
}

/// Rudder's DNS-capture default, from `ISTIO_META_DNS_CAPTURE`: on unless it says `false`.
/// Istio's default is off; Rudder's is on because the agent answers DNS for mesh hosts and a
/// cluster may have no DNS of its own.
pub fn dns_capture_from_env(value: Option<&str>) -> bool {
    !value.is_some_and(|v| v.trim().eq_ignore_ascii_case("false"))
}

/// What [`rules`] produces.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct CaptureRules {
    /// Input for `iptables-restore --noflush`; empty when there is nothing to capture.
    pub ipv4: String,
    /// Input for `ip6tables-restore --noflush`, when IPv6 is captured.
    pub ipv6: Option<String>,
    /// Policy-routing commands (argv for `ip`, without the `ip` itself), TPROXY only.
    pub routes: Vec<Vec<String>>,
}

impl CaptureRules {
    pub fn is_empty(&self) -> bool {
        self.ipv4.is_empty() && self.ipv6.is_none() && self.routes.is_empty()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn localhost(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.1/32",
            Family::V6 => "::1/128",
        }
    }

    fn passthrough(self) -> &'static str {
        match self {
            Family::V4 => PASSTHROUGH_V4,
            Family::V6 => PASSTHROUGH_V6,
        }
    }

    fn admits(self, cidr: &Cidr) -> bool {
        cidr.is_ipv6() == (self == Family::V6)
    }
}

/// The rules for `config`: nothing for mode NONE.
pub fn rules(config: &CaptureConfig) -> CaptureRules {
    if config.mode == InterceptionMode::None {
        return CaptureRules::default();
    }
    let ipv6 = config.captures_ipv6();
    let mut routes = Vec::new();
    if config.mode == InterceptionMode::Tproxy {
        routes.extend(tproxy_routes("inet", "default"));
        if ipv6 {
            routes.extend(tproxy_routes("inet6", "::/0"));
        }
    }
    CaptureRules { ipv4: tables(config, Family::V4), ipv6: ipv6.then(|| tables(config, Family::V6)), routes }
}

fn tproxy_routes(family: &str, default: &str) -> [Vec<String>; 2] {
    let words = |text: String| text.split(' ').map(str::to_owned).collect::<Vec<_>>();
    [
        words(format!("-f {family} rule add fwmark {PROXY_MARK} lookup {TPROXY_ROUTE_TABLE}")),
        words(format!("-f {family} route add local {default} dev lo table {TPROXY_ROUTE_TABLE}")),
    ]
}

/// Rule lines of one table, `-A` lines in order after the chain declarations.
struct Table {
    name: &'static str,
    chains: Vec<&'static str>,
    lines: Vec<String>,
}

impl Table {
    fn new(name: &'static str, chains: &[&'static str]) -> Self {
        Self { name, chains: chains.to_vec(), lines: Vec::new() }
    }

    fn add(&mut self, chain: &str, rule: impl fmt::Display) {
        self.lines.push(format!("-A {chain} {rule}"));
    }

    fn write(&self, out: &mut String) {
        out.push_str(&format!("*{}\n", self.name));
        for chain in &self.chains {
            out.push_str(&format!(":{chain} - [0:0]\n"));
        }
        for line in &self.lines {
            out.push_str(line);
            out.push('\n');
        }
        out.push_str("COMMIT\n");
    }
}

fn tables(config: &CaptureConfig, family: Family) -> String {
    let tproxy = config.mode == InterceptionMode::Tproxy;
    let mut out = String::new();
    if tproxy {
        mangle(config, family).write(&mut out);
    }
    nat(config, family, !tproxy).write(&mut out);
    if config.redirect_dns {
        dns_zones(config).write(&mut out);
    }
    out
}

/// Separate conntrack zones for the proxy's and the application's DNS (see the module docs).
fn dns_zones(config: &CaptureConfig) -> Table {
    let mut t = Table::new("raw", &[]);
    for interface in &config.exclude_interfaces {
        t.add("PREROUTING", format!("-i {interface} -j RETURN"));
        t.add("OUTPUT", format!("-o {interface} -j RETURN"));
    }
    // Answers from upstream nameservers can only be for the proxy: the application's queries
    // never leave the pod. (Answers over loopback already carry their conntrack entry.)
    t.add("PREROUTING", format!("-p udp --sport 53 -j CT --zone {PROXY_DNS_ZONE}"));
    for (kind, id) in [("uid", config.proxy_uid), ("gid", config.proxy_gid)] {
        t.add("OUTPUT", format!("-p udp --dport 53 -m owner --{kind}-owner {id} -j CT --zone {PROXY_DNS_ZONE}"));
        t.add(
            "OUTPUT",
            format!("-p udp --sport {} -m owner --{kind}-owner {id} -j CT --zone {APP_DNS_ZONE}", config.dns_port),
        );
    }
    t.add("OUTPUT", format!("-p udp --dport 53 -j CT --zone {APP_DNS_ZONE}"));
    t
}

/// TPROXY inbound: new connections to the TPROXY target, packets of the proxy's own
/// (transparent) connections diverted to local delivery.
fn mangle(config: &CaptureConfig, family: Family) -> Table {
    let mut t = Table::new("mangle", &["ISTIO_INBOUND", "ISTIO_DIVERT", "ISTIO_TPROXY"]);
    t.add("ISTIO_DIVERT", format!("-j MARK --set-mark {PROXY_MARK}"));
    t.add("ISTIO_DIVERT", "-j ACCEPT");
    t.add(
        "ISTIO_TPROXY",
        format!(
            "! -d {} -p tcp -j TPROXY --on-port {} --tproxy-mark {PROXY_MARK}/0xffffffff",
            family.localhost(),
            config.inbound_port
        ),
    );
    for interface in &config.exclude_interfaces {
        t.add("PREROUTING", format!("-i {interface} -j RETURN"));
    }
    if config.include_inbound_ports == Ports::Only(Vec::new()) {
        return t;
    }
    t.add("PREROUTING", "-p tcp -j ISTIO_INBOUND");
    // Loopback is the nat table's business (the proxy calling its own pod).
    t.add("ISTIO_INBOUND", "-i lo -j RETURN");
    match &config.include_inbound_ports {
        Ports::All => {
            for port in &config.exclude_inbound_ports {
                t.add("ISTIO_INBOUND", format!("-p tcp --dport {port} -j RETURN"));
            }
            t.add("ISTIO_INBOUND", "-p tcp -m socket --transparent -j ISTIO_DIVERT");
            t.add("ISTIO_INBOUND", "-p tcp -j ISTIO_TPROXY");
        }
        Ports::Only(ports) => {
            for port in ports {
                t.add("ISTIO_INBOUND", format!("-p tcp --dport {port} -m socket --transparent -j ISTIO_DIVERT"));
                t.add("ISTIO_INBOUND", format!("-p tcp --dport {port} -j ISTIO_TPROXY"));
            }
        }
    }
    t
}

/// Outbound capture (both modes), inbound capture in REDIRECT mode, DNS capture.
fn nat(config: &CaptureConfig, family: Family, inbound: bool) -> Table {
    let chains: &[&str] = if inbound {
        &["ISTIO_INBOUND", "ISTIO_IN_REDIRECT", "ISTIO_OUTPUT", "ISTIO_REDIRECT"]
    } else {
        &["ISTIO_IN_REDIRECT", "ISTIO_OUTPUT", "ISTIO_REDIRECT"]
    };
    let mut t = Table::new("nat", chains);
    t.add("ISTIO_REDIRECT", format!("-p tcp -j REDIRECT --to-ports {}", config.outbound_port));
    t.add("ISTIO_IN_REDIRECT", format!("-p tcp -j REDIRECT --to-ports {}", config.inbound_port));

    // Arriving traffic.
    for interface in &config.exclude_interfaces {
        t.add("PREROUTING", format!("-i {interface} -j RETURN"));
    }
    for interface in &config.reroute_interfaces {
        t.add("PREROUTING", format!("-i {interface} -p tcp -j ISTIO_REDIRECT"));
    }
    if inbound {
        match &config.include_inbound_ports {
            Ports::Only(ports) if ports.is_empty() => {}
            Ports::All => {
                t.add("PREROUTING", "-p tcp -j ISTIO_INBOUND");
                for port in &config.exclude_inbound_ports {
                    t.add("ISTIO_INBOUND", format!("-p tcp --dport {port} -j RETURN"));
                }
                t.add("ISTIO_INBOUND", "-p tcp -j ISTIO_IN_REDIRECT");
            }
            Ports::Only(ports) => {
                t.add("PREROUTING", "-p tcp -j ISTIO_INBOUND");
                for port in ports {
                    t.add("ISTIO_INBOUND", format!("-p tcp --dport {port} -j ISTIO_IN_REDIRECT"));
                }
            }
        }
    }

    // Traffic sent from the pod.
    for interface in &config.exclude_interfaces {
        t.add("OUTPUT", format!("-o {interface} -j RETURN"));
    }
    let (uid, gid) = (config.proxy_uid, config.proxy_gid);
    let owners = [("uid", uid), ("gid", gid)];
    if config.redirect_dns {
        // UDP never enters ISTIO_OUTPUT: the proxy's own lookups return, the rest go to the agent.
        for (kind, id) in owners {
            t.add("OUTPUT", format!("-p udp --dport 53 -m owner --{kind}-owner {id} -j RETURN"));
        }
        t.add("OUTPUT", format!("-p udp --dport 53 -j REDIRECT --to-ports {}", config.dns_port));
    }
    t.add("OUTPUT", "-p tcp -j ISTIO_OUTPUT");
    t.add("ISTIO_OUTPUT", format!("-o lo -s {} -j RETURN", family.passthrough()));
    // With DNS capture, the application's TCP DNS over loopback must not be returned early.
    let not_dns = if config.redirect_dns { "-p tcp ! --dport 53 " } else { "" };
    let localhost = family.localhost();
    for (kind, id) in owners {
        t.add("ISTIO_OUTPUT", format!("-o lo ! -d {localhost} -m owner --{kind}-owner {id} -j ISTIO_IN_REDIRECT"));
        t.add("ISTIO_OUTPUT", format!("-o lo {not_dns}-m owner ! --{kind}-owner {id} -j RETURN"));
        t.add("ISTIO_OUTPUT", format!("-m owner --{kind}-owner {id} -j RETURN"));
    }
    if config.redirect_dns {
        t.add("ISTIO_OUTPUT", format!("-p tcp --dport 53 -j REDIRECT --to-ports {}", config.dns_port));
    }
    t.add("ISTIO_OUTPUT", format!("-d {localhost} -j RETURN"));
    for port in &config.exclude_outbound_ports {
        t.add("ISTIO_OUTPUT", format!("-p tcp --dport {port} -j RETURN"));
    }
    for port in &config.include_outbound_ports {
        t.add("ISTIO_OUTPUT", format!("-p tcp --dport {port} -j ISTIO_REDIRECT"));
    }
    for cidr in config.exclude_ip_ranges.iter().filter(|c| family.admits(c)) {
        t.add("ISTIO_OUTPUT", format!("-d {cidr} -j RETURN"));
    }
    match &config.include_ip_ranges {
        IpRanges::All => t.add("ISTIO_OUTPUT", "-j ISTIO_REDIRECT"),
        IpRanges::Only(ranges) => {
            for cidr in ranges.iter().filter(|c| family.admits(c)) {
                t.add("ISTIO_OUTPUT", format!("-d {cidr} -j ISTIO_REDIRECT"));
            }
        }
    }
    t
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The injector's default init-container flags (`-i '*' -x '' -b '*' -d 15090,15021,15020`).
    fn injected() -> CaptureFlags {
        CaptureFlags {
            include_ip_ranges: "*".into(),
            include_inbound_ports: "*".into(),
            exclude_inbound_ports: "15090,15021,15020".into(),
            ..CaptureFlags::default()
        }
    }

    fn config(base: CaptureConfig, flags: CaptureFlags) -> CaptureConfig {
        CaptureConfig::from_flags(base, &flags).unwrap()
    }

    fn lines(text: &str) -> Vec<&str> {
        text.lines().collect()
    }

    /// Asserts that `wanted` appear in `text` as whole lines, in this order.
    fn assert_in_order(text: &str, wanted: &[&str]) {
        let all = lines(text);
        let mut at = 0;
        for want in wanted {
            match all[at..].iter().position(|line| line == want) {
                Some(i) => at += i + 1,
                None => panic!("missing (or out of order) {want:?} in\n{text}"),
            }
        }
    }

    #[test]
    fn default_injected_flags_give_the_istio_shaped_redirect_rules() {
        let out = rules(&config(CaptureConfig::default(), injected()));
        let want = "\
*nat
:ISTIO_INBOUND - [0:0]
:ISTIO_IN_REDIRECT - [0:0]
:ISTIO_OUTPUT - [0:0]
:ISTIO_REDIRECT - [0:0]
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A ISTIO_INBOUND -p tcp --dport 15090 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15021 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15020 -j RETURN
-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT
-A OUTPUT -p udp --dport 53 -m owner --uid-owner 1337 -j RETURN
-A OUTPUT -p udp --dport 53 -m owner --gid-owner 1337 -j RETURN
-A OUTPUT -p udp --dport 53 -j REDIRECT --to-ports 15053
-A OUTPUT -p tcp -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -p tcp ! --dport 53 -m owner ! --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -p tcp ! --dport 53 -m owner ! --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -p tcp --dport 53 -j REDIRECT --to-ports 15053
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
-A ISTIO_OUTPUT -j ISTIO_REDIRECT
COMMIT
*raw
-A PREROUTING -p udp --sport 53 -j CT --zone 1
-A OUTPUT -p udp --dport 53 -m owner --uid-owner 1337 -j CT --zone 1
-A OUTPUT -p udp --sport 15053 -m owner --uid-owner 1337 -j CT --zone 2
-A OUTPUT -p udp --dport 53 -m owner --gid-owner 1337 -j CT --zone 1
-A OUTPUT -p udp --sport 15053 -m owner --gid-owner 1337 -j CT --zone 2
-A OUTPUT -p udp --dport 53 -j CT --zone 2
COMMIT
";
        assert_eq!(out.ipv4, want);
        assert_eq!(out.ipv6, None);
        assert!(out.routes.is_empty());
    }

    #[test]
    fn ranges_and_outbound_ports() {
        let flags = CaptureFlags {
            include_ip_ranges: "10.96.0.0/12, 10.244.0.0/16".into(),
            exclude_ip_ranges: "10.96.0.10,169.254.169.254/32".into(),
            include_outbound_ports: "3306".into(),
            exclude_outbound_ports: "9092,2181".into(),
            ..injected()
        };
        let out = rules(&config(CaptureConfig::default(), flags));
        assert_in_order(
            &out.ipv4,
            &[
                "-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN",
                "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN",
                "-A ISTIO_OUTPUT -p tcp --dport 9092 -j RETURN",
                "-A ISTIO_OUTPUT -p tcp --dport 2181 -j RETURN",
                "-A ISTIO_OUTPUT -p tcp --dport 3306 -j ISTIO_REDIRECT",
                "-A ISTIO_OUTPUT -d 10.96.0.10/32 -j RETURN",
                "-A ISTIO_OUTPUT -d 169.254.169.254/32 -j RETURN",
                "-A ISTIO_OUTPUT -d 10.96.0.0/12 -j ISTIO_REDIRECT",
                "-A ISTIO_OUTPUT -d 10.244.0.0/16 -j ISTIO_REDIRECT",
                "COMMIT",
            ],
        );
        assert!(!out.ipv4.contains("-A ISTIO_OUTPUT -j ISTIO_REDIRECT"), "{}", out.ipv4);
        assert_eq!(out.ipv6, None);

        // Nothing included: only the listed outbound ports are captured.
        let none = CaptureFlags { include_ip_ranges: String::new(), include_outbound_ports: "80".into(), ..injected() };
        let out = rules(&config(CaptureConfig::default(), none));
        let redirects: Vec<_> = lines(&out.ipv4).into_iter().filter(|l| l.ends_with("-j ISTIO_REDIRECT")).collect();
        assert_eq!(redirects, ["-A ISTIO_OUTPUT -p tcp --dport 80 -j ISTIO_REDIRECT"]);
    }

    #[test]
    fn ipv6_ranges_bring_ip6tables_rules() {
        let flags = CaptureFlags {
            include_ip_ranges: "10.0.0.0/8,fd00:10::/64".into(),
            exclude_ip_ranges: "fd00:10::53".into(),
            ..injected()
        };
        let out = rules(&config(CaptureConfig::default(), flags));
        assert!(out.ipv4.contains("-A ISTIO_OUTPUT -d 10.0.0.0/8 -j ISTIO_REDIRECT"));
        assert!(!out.ipv4.contains("fd00"), "{}", out.ipv4);
        let v6 = out.ipv6.unwrap();
        assert_in_order(
            &v6,
            &[
                "*nat",
                "-A ISTIO_OUTPUT -o lo -s ::6/128 -j RETURN",
                "-A ISTIO_OUTPUT -o lo ! -d ::1/128 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT",
                "-A ISTIO_OUTPUT -d ::1/128 -j RETURN",
                "-A ISTIO_OUTPUT -d fd00:10::53/128 -j RETURN",
                "-A ISTIO_OUTPUT -d fd00:10::/64 -j ISTIO_REDIRECT",
                "COMMIT",
            ],
        );
        assert!(!v6.contains("10.0.0.0"), "{v6}");

        // Asked for explicitly: the same structure with `*`.
        let out = rules(&config(CaptureConfig { ipv6: true, ..CaptureConfig::default() }, injected()));
        assert!(out.ipv6.unwrap().contains("-A ISTIO_OUTPUT -j ISTIO_REDIRECT"));
    }

    #[test]
    fn inbound_ports_listed_or_all() {
        let listed = CaptureFlags { include_inbound_ports: "9080, 8443".into(), ..injected() };
        let out = rules(&config(CaptureConfig::default(), listed));
        assert_in_order(
            &out.ipv4,
            &[
                "-A PREROUTING -p tcp -j ISTIO_INBOUND",
                "-A ISTIO_INBOUND -p tcp --dport 9080 -j ISTIO_IN_REDIRECT",
                "-A ISTIO_INBOUND -p tcp --dport 8443 -j ISTIO_IN_REDIRECT",
            ],
        );
        // With a list, the exclusions are moot and the catch-all is absent.
        assert!(!out.ipv4.contains("--dport 15090"), "{}", out.ipv4);
        assert!(!out.ipv4.contains("-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT"), "{}", out.ipv4);

        let nothing = CaptureFlags { include_inbound_ports: String::new(), ..injected() };
        let out = rules(&config(CaptureConfig::default(), nothing));
        assert!(!out.ipv4.contains("-A PREROUTING -p tcp"), "{}", out.ipv4);
        assert!(out.ipv4.contains("-A OUTPUT -p tcp -j ISTIO_OUTPUT"));
    }

    #[test]
    fn interfaces() {
        let flags = CaptureFlags {
            reroute_interfaces: "kubevirt0".into(),
            exclude_interfaces: "eth1,ppp+".into(),
            ..injected()
        };
        let out = rules(&config(CaptureConfig::default(), flags));
        assert_in_order(
            &out.ipv4,
            &[
                "-A PREROUTING -i eth1 -j RETURN",
                "-A PREROUTING -i ppp+ -j RETURN",
                "-A PREROUTING -i kubevirt0 -p tcp -j ISTIO_REDIRECT",
                "-A PREROUTING -p tcp -j ISTIO_INBOUND",
                "-A OUTPUT -o eth1 -j RETURN",
                "-A OUTPUT -o ppp+ -j RETURN",
                "-A OUTPUT -p udp --dport 53 -m owner --uid-owner 1337 -j RETURN",
            ],
        );
    }

    #[test]
    fn tproxy_uses_mangle_for_inbound_and_a_policy_route() {
        let base = CaptureConfig { mode: InterceptionMode::Tproxy, ..CaptureConfig::default() };
        let out = rules(&config(base.clone(), injected()));
        assert_in_order(
            &out.ipv4,
            &[
                "*mangle",
                ":ISTIO_INBOUND - [0:0]",
                ":ISTIO_DIVERT - [0:0]",
                ":ISTIO_TPROXY - [0:0]",
                "-A ISTIO_DIVERT -j MARK --set-mark 1337",
                "-A ISTIO_DIVERT -j ACCEPT",
                "-A ISTIO_TPROXY ! -d 127.0.0.1/32 -p tcp -j TPROXY --on-port 15006 --tproxy-mark 1337/0xffffffff",
                "-A PREROUTING -p tcp -j ISTIO_INBOUND",
                "-A ISTIO_INBOUND -i lo -j RETURN",
                "-A ISTIO_INBOUND -p tcp --dport 15090 -j RETURN",
                "-A ISTIO_INBOUND -p tcp --dport 15020 -j RETURN",
                "-A ISTIO_INBOUND -p tcp -m socket --transparent -j ISTIO_DIVERT",
                "-A ISTIO_INBOUND -p tcp -j ISTIO_TPROXY",
                "COMMIT",
                "*nat",
                "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
                "-A OUTPUT -p tcp -j ISTIO_OUTPUT",
                "-A ISTIO_OUTPUT -j ISTIO_REDIRECT",
                "COMMIT",
            ],
        );
        // Inbound is not captured in nat in TPROXY mode.
        let nat = &out.ipv4[out.ipv4.find("*nat").unwrap()..];
        assert!(!nat.contains("ISTIO_INBOUND"), "{nat}");
        assert_eq!(
            out.routes,
            [
                ["-f", "inet", "rule", "add", "fwmark", "1337", "lookup", "133"].map(String::from).to_vec(),
                ["-f", "inet", "route", "add", "local", "default", "dev", "lo", "table", "133"]
                    .map(String::from)
                    .to_vec(),
            ]
        );

        let listed = CaptureFlags { include_inbound_ports: "9080".into(), ..injected() };
        let out = rules(&config(CaptureConfig { ipv6: true, ..base }, listed));
        assert_in_order(
            &out.ipv4,
            &[
                "-A ISTIO_INBOUND -p tcp --dport 9080 -m socket --transparent -j ISTIO_DIVERT",
                "-A ISTIO_INBOUND -p tcp --dport 9080 -j ISTIO_TPROXY",
            ],
        );
        assert!(out.ipv6.unwrap().contains("-A ISTIO_TPROXY ! -d ::1/128 -p tcp -j TPROXY"));
        assert_eq!(out.routes.len(), 4);
        assert_eq!(out.routes[3].join(" "), "-f inet6 route add local ::/0 dev lo table 133");
    }

    #[test]
    fn none_means_no_rules() {
        let base = CaptureConfig { mode: InterceptionMode::None, ipv6: true, ..CaptureConfig::default() };
        let out = rules(&config(base, injected()));
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn dns_capture_spares_the_proxy_and_can_be_off() {
        let on = rules(&config(CaptureConfig::default(), injected())).ipv4;
        // UDP: the proxy's lookups return before the redirect.
        assert_in_order(
            &on,
            &[
                "-A OUTPUT -p udp --dport 53 -m owner --uid-owner 1337 -j RETURN",
                "-A OUTPUT -p udp --dport 53 -m owner --gid-owner 1337 -j RETURN",
                "-A OUTPUT -p udp --dport 53 -j REDIRECT --to-ports 15053",
            ],
        );
        // TCP: after the owner returns, before the loopback and range returns.
        assert_in_order(
            &on,
            &[
                "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN",
                "-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN",
                "-A ISTIO_OUTPUT -p tcp --dport 53 -j REDIRECT --to-ports 15053",
                "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN",
            ],
        );
        let custom = CaptureConfig { proxy_uid: 2000, proxy_gid: 3000, dns_port: 5353, ..CaptureConfig::default() };
        let out = rules(&config(custom, injected())).ipv4;
        assert!(out.contains("-A OUTPUT -p udp --dport 53 -m owner --gid-owner 3000 -j RETURN"), "{out}");
        assert!(out.contains("-A ISTIO_OUTPUT -p tcp --dport 53 -j REDIRECT --to-ports 5353"), "{out}");

        let off = rules(&config(CaptureConfig { redirect_dns: false, ..CaptureConfig::default() }, injected())).ipv4;
        assert!(!off.contains("53"), "{off}");
        assert!(off.contains("-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN"), "{off}");
    }

    #[test]
    fn proxy_and_application_dns_live_in_separate_conntrack_zones() {
        let flags = CaptureFlags { exclude_interfaces: "eth9".into(), ..injected() };
        let on = rules(&config(CaptureConfig { dns_port: 5353, ..CaptureConfig::default() }, flags));
        let raw = on.ipv4.split("*raw\n").nth(1).unwrap_or_else(|| panic!("no raw table in\n{}", on.ipv4));
        // The first CT rule a packet meets decides its zone: the proxy's own lookups and the
        // agent's answers are told apart before the catch-all for the application's queries.
        assert_eq!(
            lines(raw),
            [
                "-A PREROUTING -i eth9 -j RETURN",
                "-A OUTPUT -o eth9 -j RETURN",
                "-A PREROUTING -p udp --sport 53 -j CT --zone 1",
                "-A OUTPUT -p udp --dport 53 -m owner --uid-owner 1337 -j CT --zone 1",
                "-A OUTPUT -p udp --sport 5353 -m owner --uid-owner 1337 -j CT --zone 2",
                "-A OUTPUT -p udp --dport 53 -m owner --gid-owner 1337 -j CT --zone 1",
                "-A OUTPUT -p udp --sport 5353 -m owner --gid-owner 1337 -j CT --zone 2",
                "-A OUTPUT -p udp --dport 53 -j CT --zone 2",
                "COMMIT",
            ]
        );
        let off = rules(&config(CaptureConfig { redirect_dns: false, ..CaptureConfig::default() }, injected()));
        assert!(!off.ipv4.contains("*raw"), "{}", off.ipv4);
    }

    #[test]
    fn dns_capture_is_on_unless_the_env_says_false() {
        assert!(dns_capture_from_env(None));
        assert!(dns_capture_from_env(Some("true")));
        assert!(dns_capture_from_env(Some("")));
        assert!(!dns_capture_from_env(Some("false")));
        assert!(!dns_capture_from_env(Some(" FALSE ")));
    }

    #[test]
    fn bad_flags_are_named() {
        let cases: [(CaptureFlags, &str); 8] = [
            (
                CaptureFlags { exclude_inbound_ports: "15090,http".into(), ..injected() },
                "-d (inbound ports not to capture): \"http\" is not a port number (1-65535)",
            ),
            (
                CaptureFlags { include_inbound_ports: "70000".into(), ..injected() },
                "-b (inbound ports to capture): \"70000\" is not a port number",
            ),
            (
                CaptureFlags { exclude_outbound_ports: "0".into(), ..injected() },
                "-o (outbound ports not to capture): \"0\"",
            ),
            (
                CaptureFlags { include_outbound_ports: "-1".into(), ..injected() },
                "-q (outbound ports to capture): \"-1\"",
            ),
            (
                CaptureFlags { include_ip_ranges: "10.0.0.0/8,10.0.0/8".into(), ..injected() },
                "-i (outbound IP ranges to capture): \"10.0.0/8\" \"10.0.0\" is not an IP address",
            ),
            (
                CaptureFlags { exclude_ip_ranges: "10.0.0.0/33".into(), ..injected() },
                "-x (outbound IP ranges not to capture): \"10.0.0.0/33\" prefix length \"33\" is not a number from 0 to 32",
            ),
            (
                CaptureFlags { exclude_interfaces: "eth0 -j ACCEPT".into(), ..injected() },
                "-c (interfaces not captured): \"eth0 -j ACCEPT\" is not an interface name",
            ),
            (
                CaptureFlags { reroute_interfaces: "averyveryverylongname".into(), ..injected() },
                "-k (interfaces rerouted as outbound)",
            ),
        ];
        for (flags, want) in cases {
            let err = CaptureConfig::from_flags(CaptureConfig::default(), &flags).unwrap_err().to_string();
            assert!(err.starts_with(want), "{err:?} should start with {want:?}");
        }
        assert_eq!("fd00::/129".parse::<Cidr>().unwrap_err(), "prefix length \"129\" is not a number from 0 to 128");
        assert_eq!("fd00::1".parse::<Cidr>().unwrap().to_string(), "fd00::1/128");
    }
}
