//! The default seccomp filter, in the spirit of docker's and podman's default profile: an allow
//! list by default, with the calls that reach past the sandbox refused with EPERM (never a
//! kill). Each group is allowed again when CMD keeps the capability that governs it, as docker
//! does (`--cap-add SYS_ADMIN` brings back mount and namespaces, and so on).
//!
//! Built with `seccompiler` (rust-vmm, Firecracker's filter compiler): pure Rust, so neither
//! the runner nor the static CNI plugin links libseccomp, and the BPF program is an ordinary
//! vector made before the fork, which the child installs with one syscall and no allocation.
//! Two things seccompiler does not express are added in front of its program: calls of another
//! ABI (i386 `int 0x80`, x32) are refused with ENOSYS (seccompiler would kill the process;
//! their numbers would not match this list anyway), and clone3, whose flags sit in memory a
//! filter cannot read, answers ENOSYS so that the C library falls back to clone, whose flags it
//! can (docker does the same).

use std::collections::BTreeMap;

use caps::Capability;
use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

use super::capabilities::CapMask;
use super::{ProcessError, Result};

/// A compiled filter, ready to install.
#[derive(Debug, Clone)]
pub struct Filter(BpfProgram);

/// Namespace flags clone(2) and unshare(2) may not use without CAP_SYS_ADMIN. (CLONE_NEWTIME
/// shares its bit with clone's exit signal; unshare checks it.)
const NAMESPACE_FLAGS: [u64; 7] = [
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWCGROUP as u64,
];
const CLONE_NEWTIME: u64 = 0x80;

/// personality(2) values docker allows: PER_LINUX, PER_LINUX32, UNAME26 with either, query.
const PERSONALITIES: [u64; 5] = [0, 0x0008, 0x20000, 0x20008, 0xffff_ffff];

/// Calls refused unless CMD keeps the capability (None: always refused).
fn groups() -> Vec<(Option<Capability>, Vec<i64>)> {
    use Capability::*;
    let mut groups = vec![
        // The kernel keyring is not namespaced; io_uring has been a rich source of kernel
        // bugs (docker refuses both).
        (
            None,
            vec![
                libc::SYS_keyctl,
                libc::SYS_add_key,
                libc::SYS_request_key,
                libc::SYS_io_uring_setup,
                libc::SYS_io_uring_enter,
                libc::SYS_io_uring_register,
                libc::SYS_name_to_handle_at,
            ],
        ),
        (
            Some(CAP_SYS_ADMIN),
            vec![
                libc::SYS_mount,
                libc::SYS_umount2,
                libc::SYS_pivot_root,
                libc::SYS_move_mount,
                libc::SYS_open_tree,
                libc::SYS_fsopen,
                libc::SYS_fsmount,
                libc::SYS_fsconfig,
                libc::SYS_fspick,
                libc::SYS_mount_setattr,
                libc::SYS_setns,
                libc::SYS_swapon,
                libc::SYS_swapoff,
                libc::SYS_quotactl,
                libc::SYS_quotactl_fd,
                libc::SYS_fanotify_init,
                libc::SYS_lookup_dcookie,
                libc::SYS_bpf,
                libc::SYS_perf_event_open,
            ],
        ),
        (
            Some(CAP_SYS_MODULE),
            vec![
                libc::SYS_init_module,
                libc::SYS_finit_module,
                libc::SYS_delete_module,
            ],
        ),
        (
            Some(CAP_SYS_BOOT),
            vec![
                libc::SYS_reboot,
                libc::SYS_kexec_load,
                libc::SYS_kexec_file_load,
            ],
        ),
        (
            Some(CAP_SYS_TIME),
            vec![
                libc::SYS_settimeofday,
                libc::SYS_clock_settime,
                libc::SYS_clock_adjtime,
            ],
        ),
        (
            Some(CAP_SYS_PTRACE),
            vec![
                libc::SYS_kcmp,
                libc::SYS_process_vm_readv,
                libc::SYS_process_vm_writev,
                libc::SYS_pidfd_getfd,
                libc::SYS_process_madvise,
                libc::SYS_userfaultfd,
            ],
        ),
        (Some(CAP_SYS_PACCT), vec![libc::SYS_acct]),
        (Some(CAP_SYSLOG), vec![libc::SYS_syslog]),
        (Some(CAP_DAC_READ_SEARCH), vec![libc::SYS_open_by_handle_at]),
        (Some(CAP_SYS_TTY_CONFIG), vec![libc::SYS_vhangup]),
    ];
    #[cfg(target_arch = "x86_64")]
    {
        groups.push((Some(CAP_SYS_RAWIO), vec![libc::SYS_iopl, libc::SYS_ioperm]));
        // Obsolete calls docker refuses too.
        groups.push((
            None,
            vec![libc::SYS_uselib, libc::SYS_ustat, libc::SYS_sysfs],
        ));
    }
    groups
}

fn masked_eq(arg: u8, flag: u64) -> Result<SeccompCondition> {
    SeccompCondition::new(
        arg,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::MaskedEq(flag),
        flag,
    )
    .map_err(compile_error)
}

fn compile_error(e: seccompiler::BackendError) -> ProcessError {
    ProcessError::Seccomp(e.to_string())
}

/// One rule per namespace flag: the call matches when any of them is set.
fn namespace_rules(flags: &[u64]) -> Result<Vec<SeccompRule>> {
    flags
        .iter()
        .map(|f| SeccompRule::new(vec![masked_eq(0, *f)?]).map_err(compile_error))
        .collect()
}

/// Whether ptrace may be allowed: from Linux 4.8 on, a traced process cannot use ptrace to
/// skip the filter (seccomp runs again after the tracer changes the call). The PID namespace
/// and the missing CAP_SYS_PTRACE confine whom CMD can trace.
fn ptrace_is_safe() -> bool {
    let Ok(uts) = nix::sys::utsname::uname() else {
        return false;
    };
    let release = uts.release().to_string_lossy();
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (major, minor) >= (4, 8)
}

/// Compiles the filter for a CMD whose bounding set is `kept`.
pub fn compile(kept: CapMask) -> Result<Filter> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (cap, calls) in groups() {
        if cap.is_some_and(|c| kept.contains(c)) {
            continue;
        }
        for call in calls {
            // An empty rule list matches the call whatever its arguments.
            rules.insert(call, vec![]);
        }
    }
    let sys_admin = kept.contains(Capability::CAP_SYS_ADMIN);
    if !sys_admin {
        rules.insert(libc::SYS_clone, namespace_rules(&NAMESPACE_FLAGS)?);
        let mut unshare = NAMESPACE_FLAGS.to_vec();
        unshare.push(CLONE_NEWTIME);
        rules.insert(libc::SYS_unshare, namespace_rules(&unshare)?);
    }
    if !ptrace_is_safe() && !kept.contains(Capability::CAP_SYS_PTRACE) {
        rules.insert(libc::SYS_ptrace, vec![]);
    }
    // Refused unless its argument is one of the usual personalities (all conditions hold).
    let odd_personality = PERSONALITIES
        .iter()
        .map(|p| SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, *p))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(compile_error)?;
    rules.insert(
        libc::SYS_personality,
        vec![SeccompRule::new(odd_personality).map_err(compile_error)?],
    );
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(compile_error)?;
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(compile_error)?;
    let program: BpfProgram = filter.try_into().map_err(compile_error)?;
    with_abi_guard(program, !sys_admin).map(Filter)
}

// Classic BPF opcodes (linux/bpf_common.h): class | size/operation | mode/source.
const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD (0) | BPF_W (0) | BPF_ABS (0x20)
const BPF_JMP_JEQ_K: u16 = 0x15; // BPF_JMP (5) | BPF_JEQ (0x10) | BPF_K (0)
const BPF_JMP_JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE (0x30) | BPF_K
const BPF_RET_K: u16 = 0x06; // BPF_RET (6) | BPF_K
/// Offsets of `nr` and `arch` in struct seccomp_data.
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH_NATIVE: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH_NATIVE: u32 = 0xc000_00b7;

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

const RET_ENOSYS: u32 = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;

/// Replaces seccompiler's architecture check (three instructions: load arch, compare, kill)
/// with one that refuses other ABIs with ENOSYS, x32 calls too, and clone3 when `no_clone3`.
fn with_abi_guard(program: BpfProgram, no_clone3: bool) -> Result<BpfProgram> {
    let expected = [
        (BPF_LD_W_ABS, DATA_ARCH),
        (BPF_JMP_JEQ_K, AUDIT_ARCH_NATIVE),
        (BPF_RET_K, libc::SECCOMP_RET_KILL_PROCESS),
    ];
    let prefix_matches = program.len() > expected.len()
        && program
            .iter()
            .zip(expected)
            .all(|(insn, (code, k))| insn.code == code && insn.k == k);
    if !prefix_matches {
        return Err(ProcessError::Seccomp(
            "seccompiler's program does not start with the expected architecture check".into(),
        ));
    }
    let mut guarded = vec![
        stmt(BPF_LD_W_ABS, DATA_ARCH),
        jump(BPF_JMP_JEQ_K, AUDIT_ARCH_NATIVE, 1, 0),
        stmt(BPF_RET_K, RET_ENOSYS),
        stmt(BPF_LD_W_ABS, DATA_NR),
    ];
    #[cfg(target_arch = "x86_64")]
    {
        const X32_SYSCALL_BIT: u32 = 0x4000_0000;
        guarded.push(jump(BPF_JMP_JGE_K, X32_SYSCALL_BIT, 0, 1));
        guarded.push(stmt(BPF_RET_K, RET_ENOSYS));
    }
    if no_clone3 {
        guarded.push(jump(BPF_JMP_JEQ_K, libc::SYS_clone3 as u32, 0, 1));
        guarded.push(stmt(BPF_RET_K, RET_ENOSYS));
    }
    guarded.extend_from_slice(&program[expected.len()..]);
    Ok(guarded)
}

impl Filter {
    /// Installs the filter on the calling thread (and sets no_new_privs, which it requires).
    /// Makes no allocation: safe between fork and exec.
    pub(crate) fn install(&self) -> std::io::Result<()> {
        seccompiler::apply_filter(&self.0).map_err(|e| match e {
            seccompiler::Error::Prctl(e) | seccompiler::Error::Seccomp(e) => e,
            _ => std::io::Error::from_raw_os_error(libc::EINVAL),
        })
    }

    /// Number of BPF instructions.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::capabilities::{CapMask, DEFAULT_CAPS};

    #[test]
    fn compiles_with_the_abi_guard_in_front() {
        let filter = compile(CapMask::of(&DEFAULT_CAPS)).expect("compile");
        assert_eq!(filter.0[0].k, DATA_ARCH);
        assert_eq!(filter.0[2].k, RET_ENOSYS);
        // Nothing in the program kills.
        assert!(filter
            .0
            .iter()
            .all(|i| !(i.code == BPF_RET_K && i.k == libc::SECCOMP_RET_KILL_PROCESS)));
        // Fits the kernel's limit of 4096 instructions with room to spare.
        assert!(filter.len() < 1024, "{}", filter.len());
    }

    #[test]
    fn kept_capabilities_shrink_the_filter() {
        let default = compile(CapMask::of(&DEFAULT_CAPS)).expect("compile");
        let admin = compile(CapMask::of(&[Capability::CAP_SYS_ADMIN])).expect("compile");
        assert!(admin.len() < default.len());
    }
}
