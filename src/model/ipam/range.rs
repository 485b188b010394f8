//! Pure address arithmetic: which addresses of a range may be handed out, and in which order a
//! range set is scanned from its cursor. No I/O here, so it is tested exhaustively.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;

use super::IpamError;

/// An address as a number, so that v4 and v6 share one arithmetic.
pub fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The address `n` of the family of `like`. `n` must fit the family (callers stay inside a
/// subnet of that family).
pub fn from_u128(like: IpAddr, n: u128) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(u32::try_from(n).unwrap_or(u32::MAX))),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(n)),
    }
}

/// First and last address of a subnet, as numbers.
pub fn subnet_bounds(subnet: IpNetwork) -> (u128, u128) {
    let first = to_u128(subnet.network());
    let last = match subnet {
        IpNetwork::V4(n) => u128::from(u32::from(n.broadcast())),
        IpNetwork::V6(n) => {
            let host_bits = 128 - u32::from(n.prefix());
            if host_bits == 128 {
                u128::MAX
            } else {
                first | ((1u128 << host_bits) - 1)
            }
        }
    };
    (first, last)
}

/// The default first and last usable addresses of a subnet: without the network address, and
/// for IPv4 without the broadcast address (point-to-point /31 and /32 keep all).
pub fn default_bounds(subnet: IpNetwork) -> (u128, u128) {
    let (first, last) = subnet_bounds(subnet);
    let tiny = match subnet {
        IpNetwork::V4(n) => n.prefix() >= 31,
        IpNetwork::V6(n) => n.prefix() >= 127,
    };
    if tiny {
        return (first, last);
    }
    let last = if subnet.is_ipv4() { last - 1 } else { last };
    (first + 1, last)
}

/// A contiguous range of addresses inside one subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    /// The subnet, normalized to its network address.
    pub subnet: IpNetwork,
    pub range_start: IpAddr,
    pub range_end: IpAddr,
    pub gateway: Option<IpAddr>,
}

impl Range {
    /// A range with host-local's defaults: start after the network address, end before the
    /// (IPv4) broadcast address, gateway the first address.
    pub fn new(
        subnet: IpNetwork,
        start: Option<IpAddr>,
        end: Option<IpAddr>,
        gateway: Option<IpAddr>,
    ) -> Result<Range, IpamError> {
        let subnet =
            IpNetwork::new(subnet.network(), subnet.prefix()).map_err(|e| IpamError::BadCidr {
                value: subnet.to_string(),
                reason: e.to_string(),
            })?;
        // host-local refuses these too: a /31 or /32 (/127, /128) has no room for a gateway
        // and a sandbox besides the network address.
        // A /0 would claim every address: its gateway and routes would shadow the host's.
        if subnet.prefix() == 0 {
            return Err(IpamError::SubnetEverything { subnet });
        }
        let max = if subnet.is_ipv4() { 32 } else { 128 };
        if subnet.prefix() > max - 2 {
            return Err(IpamError::SubnetTooSmall { subnet });
        }
        let (first, last) = default_bounds(subnet);
        let inside = |ip: IpAddr| ip.is_ipv4() == subnet.is_ipv4() && subnet.contains(ip);
        for (what, ip) in [
            ("rangeStart", start),
            ("rangeEnd", end),
            ("gateway", gateway),
        ] {
            if let Some(ip) = ip {
                if !inside(ip) {
                    return Err(IpamError::OutsideSubnet {
                        field: what,
                        ip,
                        subnet,
                    });
                }
            }
        }
        // host-local's default gateway: the first address after the network address.
        let gateway = Some(gateway.unwrap_or_else(|| from_u128(subnet.network(), first)));
        let range_start = start.unwrap_or_else(|| from_u128(subnet.network(), first));
        let range_end = end.unwrap_or_else(|| from_u128(subnet.network(), last));
        if to_u128(range_start) > to_u128(range_end) {
            return Err(IpamError::StartAfterEnd {
                start: range_start,
                end: range_end,
            });
        }
        Ok(Range {
            subnet,
            range_start,
            range_end,
            gateway,
        })
    }

    pub(crate) fn overlaps(&self, other: &Range) -> bool {
        self.subnet.is_ipv4() == other.subnet.is_ipv4()
            && to_u128(self.range_start) <= to_u128(other.range_end)
            && to_u128(other.range_start) <= to_u128(self.range_end)
    }
}

impl Range {
    /// True when `ip` lies between the range's start and end.
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.subnet.is_ipv4()
            && (to_u128(self.range_start)..=to_u128(self.range_end)).contains(&to_u128(ip))
    }

    /// True for addresses never handed out: the gateway, the network address and (IPv4) the
    /// broadcast address, unless the subnet is a point-to-point /31 or /32.
    pub fn is_reserved(&self, ip: IpAddr) -> bool {
        if Some(ip) == self.gateway {
            return true;
        }
        let (first, last) = subnet_bounds(self.subnet);
        let (usable_first, usable_last) = default_bounds(self.subnet);
        let n = to_u128(ip);
        (n == first && usable_first != first) || (n == last && usable_last != last)
    }

    /// True when `ip` may be handed out from this range.
    pub fn is_allocatable(&self, ip: IpAddr) -> bool {
        self.contains(ip) && !self.is_reserved(ip)
    }

    /// Number of addresses between start and end (reserved ones included).
    pub fn size(&self) -> u128 {
        to_u128(self.range_end) - to_u128(self.range_start) + 1
    }

    /// Human-readable form used in messages: `10.0.0.2-10.0.0.254 (10.0.0.0/24)`.
    pub fn describe(&self) -> String {
        format!("{}-{} ({})", self.range_start, self.range_end, self.subnet)
    }
}

/// Candidate addresses of a range set in allocation order: starting right after `cursor` (the
/// last address handed out) and wrapping around once, skipping reserved addresses. The order
/// makes the common case O(1): the address after the last one given out is usually free.
pub fn scan_order(set: &[Range], cursor: Option<IpAddr>) -> impl Iterator<Item = IpAddr> + '_ {
    let at = cursor.and_then(|c| set.iter().position(|r| r.contains(c)).map(|i| (i, c)));
    // Pieces of (range index, first, last) to walk through, in order.
    let mut pieces: Vec<(usize, u128, u128)> = Vec::with_capacity(set.len() + 1);
    match at {
        Some((i, c)) => {
            let c = to_u128(c);
            let r = &set[i];
            if c < to_u128(r.range_end) {
                pieces.push((i, c + 1, to_u128(r.range_end)));
            }
            for j in (i + 1..set.len()).chain(0..i) {
                pieces.push((j, to_u128(set[j].range_start), to_u128(set[j].range_end)));
            }
            pieces.push((i, to_u128(r.range_start), c));
        }
        None => {
            for (j, r) in set.iter().enumerate() {
                pieces.push((j, to_u128(r.range_start), to_u128(r.range_end)));
            }
        }
    }
    pieces.into_iter().flat_map(move |(i, first, last)| {
        let r = &set[i];
        (first..=last)
            .map(move |n| from_u128(r.range_start, n))
            .filter(move |ip| !r.is_reserved(*ip))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    fn range(subnet: &str, start: Option<&str>, end: Option<&str>, gw: Option<&str>) -> Range {
        Range::new(
            subnet.parse().expect("subnet"),
            start.map(|s| s.parse().expect("start")),
            end.map(|s| s.parse().expect("end")),
            gw.map(|s| s.parse().expect("gw")),
        )
        .expect("valid range")
    }

    #[test]
    fn a_slash_24_hands_out_2_to_254_around_the_default_gateway() {
        let r = range("10.0.0.0/24", None, None, None);
        let all: Vec<IpAddr> = scan_order(std::slice::from_ref(&r), None).collect();
        assert_eq!(all.len(), 253);
        assert_eq!(all[0], "10.0.0.2".parse::<IpAddr>().expect("ip"));
        assert_eq!(all[252], "10.0.0.254".parse::<IpAddr>().expect("ip"));
    }

    #[test]
    fn scanning_starts_after_the_cursor_and_wraps() {
        let r = range("10.0.0.0/29", None, None, None);
        let order: Vec<String> = scan_order(
            std::slice::from_ref(&r),
            Some("10.0.0.4".parse().expect("ip")),
        )
        .map(|i| i.to_string())
        .collect();
        assert_eq!(
            order,
            ["10.0.0.5", "10.0.0.6", "10.0.0.2", "10.0.0.3", "10.0.0.4"]
        );
    }

    #[test]
    fn scanning_crosses_ranges_of_a_set() {
        let set = vec![
            range("10.0.0.0/24", Some("10.0.0.10"), Some("10.0.0.11"), None),
            range("10.0.1.0/24", Some("10.0.1.10"), Some("10.0.1.11"), None),
        ];
        let order: Vec<String> = scan_order(&set, Some("10.0.0.10".parse().expect("ip")))
            .map(|i| i.to_string())
            .collect();
        assert_eq!(order, ["10.0.0.11", "10.0.1.10", "10.0.1.11", "10.0.0.10"]);
    }

    #[test]
    fn ipv6_excludes_the_network_address_and_gateway_only() {
        let r = range("fd00::/126", None, None, None);
        let all: Vec<String> = scan_order(std::slice::from_ref(&r), None)
            .map(|i| i.to_string())
            .collect();
        assert_eq!(all, ["fd00::2", "fd00::3"]);
    }

    /// A range of `subnet` between two random offsets of its default bounds.
    fn random_range(subnet: IpNetwork, a: u64, b: u64, gw: Option<u64>) -> Range {
        let subnet = IpNetwork::new(subnet.network(), subnet.prefix()).expect("prefix");
        let (lo, hi) = default_bounds(subnet);
        let size = hi - lo + 1;
        let at = |x: u64| from_u128(subnet.network(), lo + u128::from(x) % size);
        let (x, y) = (at(a), at(b));
        let (start, end) = if to_u128(x) <= to_u128(y) {
            (x, y)
        } else {
            (y, x)
        };
        Range::new(subnet, Some(start), Some(end), gw.map(at)).expect("range")
    }

    /// The properties every scan must have: never a reserved address, never outside the set,
    /// never twice, and every allocatable address exactly once.
    fn check_scan(set: &[Range], cursor: Option<IpAddr>) -> Result<(), TestCaseError> {
        let mut seen = HashSet::new();
        for ip in scan_order(set, cursor) {
            let r = set.iter().find(|r| r.contains(ip));
            prop_assert!(r.is_some(), "{ip} outside the set");
            let r = r.expect("checked");
            prop_assert!(Some(ip) != r.gateway, "gateway {ip}");
            prop_assert!(ip != r.subnet.network(), "network address {ip}");
            if let IpNetwork::V4(n) = r.subnet {
                prop_assert!(ip != IpAddr::V4(n.broadcast()), "broadcast {ip}");
            }
            prop_assert!(seen.insert(ip), "{ip} twice");
        }
        let expected: usize = set
            .iter()
            .map(|r| {
                (to_u128(r.range_start)..=to_u128(r.range_end))
                    .filter(|n| r.is_allocatable(from_u128(r.range_start, *n)))
                    .count()
            })
            .sum();
        prop_assert_eq!(seen.len(), expected);
        Ok(())
    }

    proptest! {
        #[test]
        fn ipv6_scans_have_the_same_properties(
            base in any::<u128>(),
            prefix in 100u8..=126,
            a in any::<u64>(),
            b in any::<u64>(),
            gw in proptest::option::of(any::<u64>()),
            cursor in any::<u64>(),
        ) {
            let subnet = IpNetwork::new(IpAddr::V6(Ipv6Addr::from(base)), prefix).expect("prefix");
            // Keep the range small enough to walk.
            let r = random_range(subnet, a % 4096, b % 4096, gw.map(|g| g % 4096));
            let c = from_u128(r.range_start, to_u128(r.range_start) + u128::from(cursor) % r.size());
            check_scan(std::slice::from_ref(&r), Some(c))?;
            check_scan(std::slice::from_ref(&r), None)?;
        }

        #[test]
        fn multi_range_sets_are_scanned_whole_from_any_cursor(
            nets in proptest::collection::vec((any::<u16>(), 24u8..=30, any::<u64>(), any::<u64>()), 1..4),
            cursor in any::<u64>(),
            foreign_cursor in any::<bool>(),
        ) {
            // Distinct /16s keep the ranges disjoint, as the configuration requires.
            let set: Vec<Range> = nets
                .iter()
                .enumerate()
                .map(|(i, (host, prefix, a, b))| {
                    let i = u32::try_from(i).expect("small");
                    let base = Ipv4Addr::from((10 << 24) | (i << 16) | u32::from(*host));
                    random_range(IpNetwork::new(IpAddr::V4(base), *prefix).expect("prefix"), *a, *b, None)
                })
                .collect();
            let total: u128 = set.iter().map(Range::size).sum();
            let mut n = u128::from(cursor) % total;
            let mut c = None;
            for r in &set {
                if n < r.size() {
                    c = Some(from_u128(r.range_start, to_u128(r.range_start) + n));
                    break;
                }
                n -= r.size();
            }
            // A cursor outside the set (the configuration changed) restarts from the beginning.
            let c = if foreign_cursor { Some("192.0.2.1".parse().expect("ip")) } else { c };
            check_scan(&set, c)?;
        }

        #[test]
        fn an_allocator_on_the_scan_never_hands_out_an_address_twice(
            prefix in 26u8..=29,
            ops in proptest::collection::vec(any::<(bool, u8)>(), 1..200),
        ) {
            let subnet = IpNetwork::new(IpAddr::V4(Ipv4Addr::new(10, 9, 8, 0)), prefix).expect("prefix");
            let r = Range::new(subnet, None, None, None).expect("range");
            let set = std::slice::from_ref(&r);
            let capacity = scan_order(set, None).count();
            let mut taken: Vec<IpAddr> = Vec::new();
            let mut cursor = None;
            for (allocate, pick) in ops {
                if allocate || taken.is_empty() {
                    match scan_order(set, cursor).find(|ip| !taken.contains(ip)) {
                        Some(ip) => {
                            prop_assert!(r.is_allocatable(ip));
                            taken.push(ip);
                            cursor = Some(ip);
                        }
                        None => prop_assert_eq!(taken.len(), capacity, "exhausted too early"),
                    }
                } else {
                    taken.remove(usize::from(pick) % taken.len());
                }
                let distinct: HashSet<_> = taken.iter().collect();
                prop_assert_eq!(distinct.len(), taken.len());
            }
        }

        #[test]
        fn never_reserved_never_outside_never_twice(
            base in any::<u32>(),
            prefix in 22u8..=30,
            a in any::<u16>(),
            b in any::<u16>(),
            cursor in any::<u16>(),
        ) {
            let subnet = IpNetwork::new(IpAddr::V4(Ipv4Addr::from(base)), prefix)
                .expect("prefix");
            let subnet = IpNetwork::new(subnet.network(), prefix).expect("prefix");
            let (lo, hi) = default_bounds(subnet);
            let size = hi - lo + 1;
            let (x, y) = (lo + u128::from(a) % size, lo + u128::from(b) % size);
            let (start, end) = (x.min(y), x.max(y));
            let r = Range::new(
                subnet,
                Some(from_u128(subnet.network(), start)),
                Some(from_u128(subnet.network(), end)),
                None,
            ).expect("range");
            let cursor = from_u128(subnet.network(), start + u128::from(cursor) % (end - start + 1));
            let mut seen = HashSet::new();
            for ip in scan_order(std::slice::from_ref(&r), Some(cursor)) {
                prop_assert!(Some(ip) != r.gateway, "gateway {ip}");
                prop_assert!(ip != subnet.network());
                if let IpNetwork::V4(n) = subnet { prop_assert!(ip != IpAddr::V4(n.broadcast())); }
                prop_assert!(r.contains(ip), "{ip} outside {}", r.describe());
                prop_assert!(seen.insert(ip), "{ip} twice");
            }
            let expected = (start..=end)
                .filter(|n| !r.is_reserved(from_u128(subnet.network(), *n)))
                .count();
            prop_assert_eq!(seen.len(), expected);
        }
    }
}
