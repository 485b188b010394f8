//! nf_tables over netlink: the few messages netbox's per-owner firewall state needs, sent in one
//! batch (one kernel transaction) per operation, without starting `nft` and without reading the
//! ruleset first.
//!
//! Why not `nft` for this: every `nft` run costs 4-7 ms (process start, library set-up, cache
//! reads that grow with the ruleset), more than a whole `netbox run`. Why not a crate: the
//! maintained Rust nf_tables crates (rustables, nftnl over libnftnl) cover tables, chains and rules,
//! but not what this needs: element user data (the owner of each element), set element look-ups
//! by key, interval keys (`key_end`) and batch generation ids. What is here is small and typed:
//! chains, empty rules carrying a comment, set elements, tables (delete only), and dumps. The
//! rules of the shared base chains, where nft's expression encoding matters, are still written by
//! `nft` (see `firewall::layout`), once per network namespace.

use std::os::fd::AsFd;
use std::time::Duration;

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};
use nix::sys::socket::{setsockopt, sockopt};
use nix::sys::time::TimeVal;

use thiserror::Error;

/// A failed exchange with nf_tables (a refused message of a batch is a [`BatchError`]).
#[derive(Debug, Error)]
#[error("nf_tables: {what}: {reason}")]
pub struct NfnlError {
    pub what: String,
    pub reason: String,
}

/// Address families of nf_tables (`NFPROTO_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    Inet,
    Bridge,
}

impl Family {
    fn number(self) -> u8 {
        match self {
            Family::Inet => 1,
            Family::Bridge => 7,
        }
    }

    fn from_number(n: u8) -> Option<Family> {
        match n {
            1 => Some(Family::Inet),
            7 => Some(Family::Bridge),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Family::Inet => "inet",
            Family::Bridge => "bridge",
        }
    }

    pub fn parse(s: &str) -> Option<Family> {
        match s {
            "inet" => Some(Family::Inet),
            "bridge" => Some(Family::Bridge),
            _ => None,
        }
    }
}

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_BATCH_GENID: u16 = 1;

const NFT_MSG_GETTABLE: u8 = 1;
const NFT_MSG_DELTABLE: u8 = 2;
const NFT_MSG_NEWCHAIN: u8 = 3;
const NFT_MSG_GETCHAIN: u8 = 4;
const NFT_MSG_DELCHAIN: u8 = 5;
const NFT_MSG_NEWRULE: u8 = 6;
const NFT_MSG_GETRULE: u8 = 7;
const NFT_MSG_NEWSETELEM: u8 = 12;
const NFT_MSG_GETSETELEM: u8 = 13;
const NFT_MSG_DELSETELEM: u8 = 14;
const NFT_MSG_GETGEN: u8 = 16;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_MULTI: u16 = 0x2;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_ELEM_USERDATA: u16 = 6;
const NFTA_SET_ELEM_KEY_END: u16 = 10;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_GEN_ID: u16 = 1;
/// The comment TLV in nft's user data (`NFTNL_UDATA_RULE_COMMENT`, `..._SET_ELEM_COMMENT`).
const UDATA_COMMENT: u8 = 0;

pub const ENOENT: i32 = libc::ENOENT;
pub const EEXIST: i32 = libc::EEXIST;
/// The batch's generation id is not the ruleset's any more (someone committed in between).
pub const ERESTART: i32 = libc::ERESTART;

/// A set element: its key (and the end of its range for interval sets), the value of a map.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Element {
    pub family: Family,
    pub set: &'static str,
    pub key: Vec<u8>,
    pub key_end: Option<Vec<u8>>,
    pub data: Option<Vec<u8>>,
}

/// A set element as a kernel answer shows it.
#[derive(Debug, Clone)]
pub struct ElementInfo {
    pub key: Vec<u8>,
    pub comment: Option<String>,
}

/// The error of one message of a batch (its index in the batch, None for the batch itself).
#[derive(Debug, Clone)]
pub struct BatchError {
    pub index: Option<usize>,
    pub errno: i32,
}

/// Appends attributes to a message.
struct Attrs<'a>(&'a mut Vec<u8>);

impl Attrs<'_> {
    fn put(&mut self, ty: u16, value: &[u8]) {
        let len = 4 + value.len();
        self.0.extend_from_slice(&(len as u16).to_ne_bytes());
        self.0.extend_from_slice(&ty.to_ne_bytes());
        self.0.extend_from_slice(value);
        pad(self.0);
    }

    fn put_str(&mut self, ty: u16, value: &str) {
        let mut bytes = value.as_bytes().to_vec();
        bytes.push(0);
        self.put(ty, &bytes);
    }

    fn nest(&mut self, ty: u16, inner: impl FnOnce(&mut Attrs)) {
        let start = self.0.len();
        self.0.extend_from_slice(&[0, 0]);
        self.0.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        inner(&mut Attrs(self.0));
        let len = (self.0.len() - start) as u16;
        self.0[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }
}

fn pad(buf: &mut Vec<u8>) {
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

/// nft's user data holding one comment (NUL-terminated, as nft writes it).
fn comment_udata(comment: &str) -> Vec<u8> {
    let mut text = comment.as_bytes().to_vec();
    text.push(0);
    let mut out = vec![UDATA_COMMENT, text.len() as u8];
    out.extend_from_slice(&text);
    out
}

fn comment_of_udata(udata: &[u8]) -> Option<String> {
    let mut rest = udata;
    while rest.len() >= 2 {
        let (ty, len) = (rest[0], usize::from(rest[1]));
        let value = rest.get(2..2 + len)?;
        if ty == UDATA_COMMENT {
            let text = value.strip_suffix(&[0]).unwrap_or(value);
            return String::from_utf8(text.to_vec()).ok();
        }
        rest = &rest[2 + len..];
    }
    None
}

/// Longest comment nft's user data holds (its length is one byte, with the NUL).
pub const MAX_COMMENT: usize = 254;

/// Writes one netlink message: header, nfgenmsg, attributes.
fn message(
    buf: &mut Vec<u8>,
    ty: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
    attrs: impl FnOnce(&mut Attrs),
) {
    let start = buf.len();
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf.push(family);
    buf.push(0); // NFNETLINK_V0
    buf.extend_from_slice(&res_id.to_be_bytes());
    attrs(&mut Attrs(buf));
    let len = (buf.len() - start) as u32;
    buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

fn nft_type(msg: u8) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | u16::from(msg)
}

/// One transaction being written: messages between a batch begin and end.
pub struct Batch {
    body: Vec<u8>,
    genid: Option<u32>,
    count: usize,
    /// Where the last message starts: only it asks for an ack (errors come for every failing
    /// message anyway), so a transaction is answered in one or two reads.
    last: usize,
}

impl Batch {
    pub fn new() -> Batch {
        Batch {
            body: Vec::new(),
            genid: None,
            count: 0,
            last: 0,
        }
    }

    /// The batch fails with [`ERESTART`] when the ruleset changed since `genid` was read.
    pub fn only_at_generation(&mut self, genid: u32) {
        self.genid = Some(genid);
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn push(&mut self, msg: u8, family: Family, flags: u16, attrs: impl FnOnce(&mut Attrs)) {
        // Sequence numbers are indexes shifted past the batch begin (seq 0).
        self.count += 1;
        let seq = self.count as u32;
        self.last = self.body.len();
        message(
            &mut self.body,
            nft_type(msg),
            NLM_F_REQUEST | flags,
            seq,
            family.number(),
            0,
            attrs,
        );
    }

    /// Creates a regular chain; fails with EEXIST when it exists.
    pub fn create_chain(&mut self, family: Family, table: &str, chain: &str) {
        self.push(NFT_MSG_NEWCHAIN, family, NLM_F_CREATE | NLM_F_EXCL, |a| {
            a.put_str(NFTA_CHAIN_TABLE, table);
            a.put_str(NFTA_CHAIN_NAME, chain);
        });
    }

    /// Deletes a chain with its rules.
    pub fn delete_chain(&mut self, family: Family, table: &str, chain: &str) {
        self.push(NFT_MSG_DELCHAIN, family, 0, |a| {
            a.put_str(NFTA_CHAIN_TABLE, table);
            a.put_str(NFTA_CHAIN_NAME, chain);
        });
    }

    /// Appends a rule without expressions (it matches nothing and does nothing) that carries a
    /// comment: a record kept in the kernel.
    pub fn add_note(&mut self, family: Family, table: &str, chain: &str, comment: &str) {
        self.push(NFT_MSG_NEWRULE, family, NLM_F_CREATE | NLM_F_APPEND, |a| {
            a.put_str(NFTA_RULE_TABLE, table);
            a.put_str(NFTA_RULE_CHAIN, chain);
            a.put(NFTA_RULE_USERDATA, &comment_udata(comment));
        });
    }

    /// Adds an element with a comment; fails with EEXIST when its key is taken.
    pub fn create_element(&mut self, table: &str, element: &Element, comment: &str) {
        self.push(
            NFT_MSG_NEWSETELEM,
            element.family,
            NLM_F_CREATE | NLM_F_EXCL,
            |a| element_list(a, table, element, Some(comment)),
        );
    }

    pub fn delete_element(&mut self, table: &str, element: &Element) {
        self.push(NFT_MSG_DELSETELEM, element.family, 0, |a| {
            element_list(a, table, element, None)
        });
    }

    pub fn delete_table(&mut self, family: Family, table: &str) {
        self.push(NFT_MSG_DELTABLE, family, 0, |a| {
            a.put_str(NFTA_TABLE_NAME, table)
        });
    }

    /// The whole datagram: begin, messages, end.
    fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(self.body.len() + 64);
        let genid = self.genid;
        message(
            &mut buf,
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            0,
            0,
            NFNL_SUBSYS_NFTABLES,
            |a| {
                if let Some(id) = genid {
                    a.put(NFNL_BATCH_GENID, &id.to_be_bytes());
                }
            },
        );
        let last = buf.len() + self.last;
        buf.extend_from_slice(&self.body);
        if let Some(f) = buf.get_mut(last + 6..last + 8) {
            let flags = u16::from_ne_bytes([f[0], f[1]]) | NLM_F_ACK;
            f.copy_from_slice(&flags.to_ne_bytes());
        }
        message(
            &mut buf,
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            self.count as u32 + 1,
            0,
            NFNL_SUBSYS_NFTABLES,
            |_| {},
        );
        buf
    }
}

impl Default for Batch {
    fn default() -> Self {
        Batch::new()
    }
}

fn element_list(a: &mut Attrs, table: &str, element: &Element, comment: Option<&str>) {
    a.put_str(NFTA_SET_ELEM_LIST_TABLE, table);
    a.put_str(NFTA_SET_ELEM_LIST_SET, element.set);
    a.nest(NFTA_SET_ELEM_LIST_ELEMENTS, |a| {
        a.nest(NFTA_LIST_ELEM, |a| {
            a.nest(NFTA_SET_ELEM_KEY, |a| a.put(NFTA_DATA_VALUE, &element.key));
            if let Some(end) = &element.key_end {
                a.nest(NFTA_SET_ELEM_KEY_END, |a| a.put(NFTA_DATA_VALUE, end));
            }
            if let (Some(data), Some(_)) = (&element.data, comment) {
                a.nest(NFTA_SET_ELEM_DATA, |a| a.put(NFTA_DATA_VALUE, data));
            }
            if let Some(comment) = comment {
                a.put(NFTA_SET_ELEM_USERDATA, &comment_udata(comment));
            }
        });
    });
}

/// One parsed netlink message: type, flags, sequence, family, attributes.
struct Reply<'a> {
    ty: u16,
    flags: u16,
    seq: u32,
    family: u8,
    payload: &'a [u8],
}

fn replies(buf: &[u8]) -> impl Iterator<Item = Reply<'_>> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.len() < 16 {
            return None;
        }
        let len = u32::from_ne_bytes(rest[0..4].try_into().ok()?) as usize;
        if len < 16 || len > rest.len() {
            return None;
        }
        let msg = &rest[..len];
        rest = &rest[(len + 3) & !3..];
        let ty = u16::from_ne_bytes(msg[4..6].try_into().ok()?);
        let flags = u16::from_ne_bytes(msg[6..8].try_into().ok()?);
        let seq = u32::from_ne_bytes(msg[8..12].try_into().ok()?);
        let family = msg.get(16).copied().unwrap_or(0);
        Some(Reply {
            ty,
            flags,
            seq,
            family,
            payload: &msg[16..],
        })
    })
}

/// The attributes in `buf`, as (type, value).
fn attrs(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([rest[0], rest[1]]));
        let ty = u16::from_ne_bytes([rest[2], rest[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > rest.len() {
            return None;
        }
        let value = &rest[4..len];
        rest = rest.get((len + 3) & !3..).unwrap_or(&[]);
        Some((ty, value))
    })
}

fn attr(buf: &[u8], ty: u16) -> Option<&[u8]> {
    attrs(buf).find(|(t, _)| *t == ty).map(|(_, v)| v)
}

fn attr_str(buf: &[u8], ty: u16) -> Option<String> {
    let v = attr(buf, ty)?;
    let v = v.split(|b| *b == 0).next().unwrap_or(v);
    String::from_utf8(v.to_vec()).ok()
}

/// The errno of an NLMSG_ERROR payload (0 for an ack).
fn error_of(payload: &[u8]) -> i32 {
    payload
        .get(0..4)
        .and_then(|b| b.try_into().ok())
        .map(|b| -i32::from_ne_bytes(b))
        .unwrap_or(libc::EIO)
}

/// A netlink socket to nf_tables in the current network namespace.
pub struct Nfnl {
    socket: Socket,
    buf: Vec<u8>,
}

fn io(what: &str, e: impl std::fmt::Display) -> NfnlError {
    NfnlError {
        what: what.into(),
        reason: e.to_string(),
    }
}

impl Nfnl {
    pub fn open() -> Result<Nfnl, NfnlError> {
        let mut socket =
            Socket::new(NETLINK_NETFILTER).map_err(|e| io("opening a netfilter socket", e))?;
        socket
            .bind_auto()
            .map_err(|e| io("binding a netfilter socket", e))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(|e| io("connecting a netfilter socket", e))?;
        // A kernel that never answers must not hang a sandbox start.
        setsockopt(
            &socket.as_fd(),
            sockopt::ReceiveTimeout,
            &TimeVal::from(libc::timeval {
                tv_sec: Duration::from_secs(10).as_secs() as _,
                tv_usec: 0,
            }),
        )
        .map_err(|e| io("setting a receive timeout", e))?;
        Ok(Nfnl {
            socket,
            buf: Vec::with_capacity(1 << 16),
        })
    }

    fn send(&self, data: &[u8]) -> Result<(), NfnlError> {
        self.socket
            .send(data, 0)
            .map_err(|e| io("sending to nf_tables", e))?;
        Ok(())
    }

    /// Closes the socket without waiting. Closing a netfilter socket makes the kernel wait for
    /// the clean-up of the last transaction that deleted something (an RCU grace period, about
    /// 10 ms); a short-lived `sleep` holding a duplicate takes that wait instead, off the caller's
    /// path (the process exit of `netbox run` or of a CNI DEL). Without `sleep`, it just closes.
    pub fn close_in_background(self) {
        let Ok(fd) = self.socket.as_fd().try_clone_to_owned() else {
            return;
        };
        // Absolute: a CNI plugin often runs without PATH.
        let Some(sleep) = ["/usr/bin/sleep", "/bin/sleep"]
            .into_iter()
            .find(|p| std::path::Path::new(p).is_file())
        else {
            return;
        };
        let _ = std::process::Command::new(sleep)
            .arg("1")
            .stdin(std::process::Stdio::from(fd))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
    }

    fn recv(&mut self) -> Result<(), NfnlError> {
        self.buf.clear();
        self.socket
            .recv(&mut self.buf, 0)
            .map_err(|e| io("reading from nf_tables", e))?;
        Ok(())
    }

    /// Commits `batch` as one transaction. On failure, the errors of the messages that failed
    /// (all of them: the kernel goes on checking after the first), and nothing changed.
    pub fn commit(&mut self, batch: &Batch) -> Result<Result<(), Vec<BatchError>>, NfnlError> {
        if batch.is_empty() {
            return Ok(Ok(()));
        }
        self.send(&batch.encode())?;
        let last = batch.count as u32;
        let mut errors = Vec::new();
        loop {
            self.recv()?;
            let mut done = false;
            for reply in replies(&self.buf) {
                if reply.ty != NLMSG_ERROR {
                    continue;
                }
                let errno = error_of(reply.payload);
                if errno != 0 {
                    let index =
                        (reply.seq >= 1 && reply.seq <= last).then(|| reply.seq as usize - 1);
                    errors.push(BatchError { index, errno });
                    if index.is_none() {
                        done = true;
                    }
                }
                if reply.seq == last {
                    done = true;
                }
            }
            if done {
                return Ok(if errors.is_empty() {
                    Ok(())
                } else {
                    Err(errors)
                });
            }
        }
    }

    /// Sends a get or dump request and calls `each` on every answer; ENOENT is an empty answer.
    fn request(
        &mut self,
        msg: u8,
        family: u8,
        dump: bool,
        attrs_of: impl FnOnce(&mut Attrs),
        mut each: impl FnMut(&Reply),
    ) -> Result<(), NfnlError> {
        let mut buf = Vec::new();
        let flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { NLM_F_ACK };
        message(&mut buf, nft_type(msg), flags, 1, family, 0, attrs_of);
        self.send(&buf)?;
        loop {
            self.recv()?;
            for reply in replies(&self.buf) {
                match reply.ty {
                    NLMSG_DONE => return Ok(()),
                    NLMSG_ERROR => {
                        return match error_of(reply.payload) {
                            0 => Ok(()),
                            ENOENT => Ok(()),
                            errno => Err(io(
                                "asking nf_tables",
                                std::io::Error::from_raw_os_error(errno),
                            )),
                        };
                    }
                    _ => {
                        each(&reply);
                        if !dump && reply.flags & NLM_F_MULTI == 0 {
                            // A get answers with one message, then the ack.
                            continue;
                        }
                    }
                }
            }
        }
    }

    /// The ruleset's generation id.
    pub fn generation(&mut self) -> Result<u32, NfnlError> {
        let mut id = None;
        self.request(
            NFT_MSG_GETGEN,
            0,
            false,
            |_| {},
            |r| {
                id = attr(&r.payload[4..], NFTA_GEN_ID)
                    .and_then(|v| v.try_into().ok())
                    .map(u32::from_be_bytes);
            },
        )?;
        id.ok_or_else(|| io("reading the ruleset generation", "no answer"))
    }

    /// Every table (family, name).
    pub fn tables(&mut self) -> Result<Vec<(Option<Family>, String)>, NfnlError> {
        let mut out = Vec::new();
        self.request(
            NFT_MSG_GETTABLE,
            0,
            true,
            |_| {},
            |r| {
                if let Some(name) = attr_str(&r.payload[4..], NFTA_TABLE_NAME) {
                    out.push((Family::from_number(r.family), name));
                }
            },
        )?;
        Ok(out)
    }

    /// The names of the chains of one table.
    pub fn chains(&mut self, family: Family, table: &str) -> Result<Vec<String>, NfnlError> {
        let mut out = Vec::new();
        self.request(
            NFT_MSG_GETCHAIN,
            family.number(),
            true,
            |a| a.put_str(NFTA_CHAIN_TABLE, table),
            |r| {
                let p = &r.payload[4..];
                if attr_str(p, NFTA_CHAIN_TABLE).as_deref() == Some(table) {
                    if let Some(name) = attr_str(p, NFTA_CHAIN_NAME) {
                        out.push(name);
                    }
                }
            },
        )?;
        Ok(out)
    }

    /// The comments of the rules of one chain; None when there is no such chain.
    pub fn rule_comments(
        &mut self,
        family: Family,
        table: &str,
        chain: &str,
    ) -> Result<Option<Vec<String>>, NfnlError> {
        let mut out = Vec::new();
        let mut found = false;
        let mut errno = 0;
        let mut buf = Vec::new();
        message(
            &mut buf,
            nft_type(NFT_MSG_GETRULE),
            NLM_F_REQUEST | NLM_F_DUMP,
            1,
            family.number(),
            0,
            |a| {
                a.put_str(NFTA_RULE_TABLE, table);
                a.put_str(NFTA_RULE_CHAIN, chain);
            },
        );
        self.send(&buf)?;
        'read: loop {
            self.recv()?;
            for reply in replies(&self.buf) {
                match reply.ty {
                    NLMSG_DONE => {
                        found |= errno == 0;
                        break 'read;
                    }
                    NLMSG_ERROR => {
                        errno = error_of(reply.payload);
                        break 'read;
                    }
                    _ => {
                        found = true;
                        let p = &reply.payload[4..];
                        if attr_str(p, NFTA_RULE_CHAIN).as_deref() != Some(chain) {
                            continue;
                        }
                        if let Some(c) = attr(p, NFTA_RULE_USERDATA).and_then(comment_of_udata) {
                            out.push(c);
                        }
                    }
                }
            }
        }
        match errno {
            0 => {}
            ENOENT => return Ok(None),
            e => return Err(io("listing rules", std::io::Error::from_raw_os_error(e))),
        }
        // An empty dump does not tell an empty chain from a missing one: ask for the chain.
        if !found || out.is_empty() {
            let names = self.chain_exists(family, table, chain)?;
            return Ok(names.then_some(out));
        }
        Ok(Some(out))
    }

    fn chain_exists(
        &mut self,
        family: Family,
        table: &str,
        chain: &str,
    ) -> Result<bool, NfnlError> {
        let mut found = false;
        self.request(
            NFT_MSG_GETCHAIN,
            family.number(),
            false,
            |a| {
                a.put_str(NFTA_CHAIN_TABLE, table);
                a.put_str(NFTA_CHAIN_NAME, chain);
            },
            |_| found = true,
        )?;
        Ok(found)
    }

    /// The element of `set` holding `element`'s key, if any.
    pub fn element(
        &mut self,
        table: &str,
        element: &Element,
    ) -> Result<Option<ElementInfo>, NfnlError> {
        let mut out = None;
        self.request(
            NFT_MSG_GETSETELEM,
            element.family.number(),
            false,
            |a| element_list(a, table, element, None),
            |r| out = elements_of(&r.payload[4..]).into_iter().next(),
        )?;
        Ok(out)
    }

    /// Every element of one set.
    pub fn elements(
        &mut self,
        family: Family,
        table: &str,
        set: &str,
    ) -> Result<Vec<ElementInfo>, NfnlError> {
        let mut out = Vec::new();
        self.request(
            NFT_MSG_GETSETELEM,
            family.number(),
            true,
            |a| {
                a.put_str(NFTA_SET_ELEM_LIST_TABLE, table);
                a.put_str(NFTA_SET_ELEM_LIST_SET, set);
            },
            |r| out.extend(elements_of(&r.payload[4..])),
        )?;
        Ok(out)
    }
}

fn elements_of(payload: &[u8]) -> Vec<ElementInfo> {
    let Some(list) = attr(payload, NFTA_SET_ELEM_LIST_ELEMENTS) else {
        return vec![];
    };
    attrs(list)
        .filter(|(t, _)| *t == NFTA_LIST_ELEM)
        .map(|(_, elem)| ElementInfo {
            key: attr(elem, NFTA_SET_ELEM_KEY)
                .and_then(|k| attr(k, NFTA_DATA_VALUE))
                .unwrap_or_default()
                .to_vec(),
            comment: attr(elem, NFTA_SET_ELEM_USERDATA).and_then(comment_of_udata),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_round_trip_through_user_data() {
        let u = comment_udata("proc/1.2");
        assert_eq!(comment_of_udata(&u).as_deref(), Some("proc/1.2"));
        assert_eq!(comment_of_udata(&[]), None);
    }

    #[test]
    fn a_batch_is_framed_by_begin_and_end_with_one_sequence_per_message() {
        let mut b = Batch::new();
        b.create_chain(Family::Inet, "netbox", "owner-x");
        b.add_note(Family::Inet, "netbox", "owner-x", "inet masq4 0a000002");
        let buf = b.encode();
        let seqs: Vec<(u16, u32)> = replies(&buf).map(|r| (r.ty, r.seq)).collect();
        assert_eq!(
            seqs,
            vec![
                (NFNL_MSG_BATCH_BEGIN, 0),
                (nft_type(NFT_MSG_NEWCHAIN), 1),
                (nft_type(NFT_MSG_NEWRULE), 2),
                (NFNL_MSG_BATCH_END, 3)
            ]
        );
        let rule = replies(&buf).nth(2).expect("rule");
        assert_eq!(
            attr_str(&rule.payload[4..], NFTA_RULE_CHAIN).as_deref(),
            Some("owner-x")
        );
    }
}
