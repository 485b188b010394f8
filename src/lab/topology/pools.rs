//! Address pools of a lab: hosts drawn in order from a subnet, and /24 (or /64) subnets drawn
//! from the lab's pool past those the file uses (pure range arithmetic of `ipam::range`: a lab
//! is short-lived and private, no lease store is needed).

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::model::ipam::range::{from_u128, subnet_bounds};

/// Address allocation within one subnet.
pub struct Pool {
    pub subnet: IpNetwork,
    used: BTreeSet<IpAddr>,
    next: u128,
}

impl Pool {
    pub fn new(subnet: IpNetwork) -> Pool {
        let (first, _) = subnet_bounds(subnet);
        Pool {
            subnet,
            used: BTreeSet::new(),
            next: first + 1,
        }
    }

    pub fn reserve(&mut self, ip: IpAddr) {
        self.used.insert(ip);
    }

    pub fn take(&mut self) -> Option<IpNetwork> {
        let (_, last) = subnet_bounds(self.subnet);
        // The broadcast address of an IPv4 subnet is not a host.
        let last = if self.subnet.is_ipv4() {
            last - 1
        } else {
            last
        };
        while self.next <= last {
            let ip = from_u128(self.subnet.network(), self.next);
            self.next += 1;
            if self.used.insert(ip) {
                return IpNetwork::new(ip, self.subnet.prefix()).ok();
            }
        }
        None
    }
}

/// Hands out /24 (or /64) subnets of the pool that nothing in the file uses.
pub struct SubnetPool {
    pool: IpNetwork,
    taken: Vec<IpNetwork>,
    next: u128,
}

impl SubnetPool {
    /// Subnets of `pool` that overlap none of `taken`.
    pub fn new(pool: IpNetwork, taken: Vec<IpNetwork>) -> SubnetPool {
        SubnetPool {
            pool,
            taken,
            next: 0,
        }
    }

    pub fn pool(&self) -> IpNetwork {
        self.pool
    }

    pub fn take(&mut self) -> Option<IpNetwork> {
        let child_prefix = if self.pool.is_ipv4() { 24 } else { 64 };
        if self.pool.prefix() > child_prefix {
            return None;
        }
        let (first, last) = subnet_bounds(self.pool);
        let step = 1u128 << (if self.pool.is_ipv4() { 32 } else { 128 } - child_prefix);
        let mut at = first + self.next * step;
        while at <= last {
            self.next += 1;
            let net = IpNetwork::new(from_u128(self.pool.network(), at), child_prefix).ok()?;
            if !self.taken.iter().any(|t| overlaps(*t, net)) {
                return Some(net);
            }
            at += step;
        }
        None
    }
}

fn overlaps(a: IpNetwork, b: IpNetwork) -> bool {
    a.contains(b.network()) || b.contains(a.network())
}
