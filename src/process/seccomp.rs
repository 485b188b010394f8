//! The default seccomp filter, in the spirit of docker's and podman's default profile: any
//! call is allowed except those that reach past the sandbox, which fail with EPERM (the filter
//! never kills). Each group is allowed again when CMD keeps the capability that governs it, as
//! docker does (`--cap-add SYS_ADMIN` brings back mount and namespaces, and so on).
//!
//! The program is written here rather than with a filter compiler such as `seccompiler`:
//! seccompiler lays its rules out as a linear chain that every allowed call walks through, and
//! the kernel, when the filter is installed, emulates it for every syscall number to build its
//! cache of always-allowed calls: 170 us per sandbox start for this list (measured), against
//! about 40 us for the sorted tree below (seven comparisons for any call). seccompiler also
//! kills a process that uses another ABI, where this filter answers ENOSYS. The program is
//! built before the fork; the child installs it with one syscall and no allocation.
//!
//! Layout: calls of another ABI (i386 `int 0x80`, x32) get ENOSYS (their numbers would not
//! match this list); clone3, whose flags are in memory a filter cannot read, gets ENOSYS so
//! that the C library falls back to clone, whose flags it can (docker does the same); then a
//! binary search over the sorted numbers of the refused calls, with argument checks for clone,
//! unshare (namespace flags) and personality (the usual personalities only).

use caps::Capability;

use super::bpf::{Asm, Insn, To, JEQ, JGE, JSET};
use super::capabilities::CapMask;
use super::Result;

/// A compiled filter, ready to install.
#[derive(Debug, Clone)]
pub struct Filter(Vec<Insn>);

/// Namespace flags clone(2) and unshare(2) may not use without CAP_SYS_ADMIN. (CLONE_NEWTIME
/// shares its bit with clone's exit signal; only unshare is checked for it.)
const NAMESPACE_FLAGS: u32 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u32;
const CLONE_NEWTIME: u32 = 0x80;

/// personality(2) values docker allows: PER_LINUX, PER_LINUX32, UNAME26 with either, query.
const PERSONALITIES: [u32; 5] = [0, 0x0008, 0x20000, 0x20008, 0xffff_ffff];

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

/// What the filter does with a call it lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Deny,
    CloneFlags,
    UnshareFlags,
    Personality,
}

/// The calls the filter looks at for a CMD whose bounding set is `kept`, sorted by number.
fn checks(kept: CapMask) -> Vec<(u32, Check)> {
    let mut calls: Vec<(u32, Check)> = vec![];
    for (cap, list) in groups() {
        if !cap.is_some_and(|c| kept.contains(c)) {
            calls.extend(list.into_iter().map(|nr| (nr as u32, Check::Deny)));
        }
    }
    if !kept.contains(Capability::CAP_SYS_ADMIN) {
        calls.push((libc::SYS_clone as u32, Check::CloneFlags));
        calls.push((libc::SYS_unshare as u32, Check::UnshareFlags));
    }
    if !ptrace_is_safe() && !kept.contains(Capability::CAP_SYS_PTRACE) {
        calls.push((libc::SYS_ptrace as u32, Check::Deny));
    }
    calls.push((libc::SYS_personality as u32, Check::Personality));
    calls.sort_unstable_by_key(|(nr, _)| *nr);
    calls.dedup_by_key(|(nr, _)| *nr);
    calls
}

/// Offsets in struct seccomp_data: nr, arch, then the arguments (the low half of a 64-bit
/// argument comes first on these little-endian architectures).
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;
const DATA_ARG0_LOW: u32 = 16;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH_NATIVE: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH_NATIVE: u32 = 0xc000_00b7;

const RET_ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
const RET_EPERM: u32 = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
const RET_ENOSYS: u32 = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;

/// Compiles the filter for a CMD whose bounding set is `kept`.
pub fn compile(kept: CapMask) -> Result<Filter> {
    let mut asm = Asm::default();
    let (allow, deny, enosys) = (asm.label(), asm.label(), asm.label());
    asm.load(DATA_ARCH);
    asm.cond(JEQ, AUDIT_ARCH_NATIVE, To::Next, To::Label(enosys));
    asm.load(DATA_NR);
    #[cfg(target_arch = "x86_64")]
    {
        const X32_SYSCALL_BIT: u32 = 0x4000_0000;
        asm.cond(JGE, X32_SYSCALL_BIT, To::Label(enosys), To::Next);
    }
    if !kept.contains(Capability::CAP_SYS_ADMIN) {
        asm.cond(JEQ, libc::SYS_clone3 as u32, To::Label(enosys), To::Next);
    }
    let calls = checks(kept);
    let mut leaves = [None; 4];
    let mut leaf = |asm: &mut Asm, check: Check| match check {
        Check::Deny => deny,
        _ => *leaves[check as usize].get_or_insert_with(|| asm.label()),
    };
    let targets: Vec<(u32, usize)> = calls
        .iter()
        .map(|(nr, check)| (*nr, leaf(&mut asm, *check)))
        .collect();
    search(&mut asm, &targets, allow);
    for (check, label) in [Check::CloneFlags, Check::UnshareFlags, Check::Personality]
        .into_iter()
        .filter_map(|c| leaves[c as usize].map(|l| (c, l)))
    {
        asm.bind(label);
        asm.load(DATA_ARG0_LOW);
        match check {
            Check::CloneFlags => asm.cond(JSET, NAMESPACE_FLAGS, To::Label(deny), To::Label(allow)),
            Check::UnshareFlags => asm.cond(
                JSET,
                NAMESPACE_FLAGS | CLONE_NEWTIME,
                To::Label(deny),
                To::Label(allow),
            ),
            _ => {
                for p in PERSONALITIES {
                    asm.cond(JEQ, p, To::Label(allow), To::Next);
                }
                asm.jump(deny);
            }
        }
    }
    asm.bind(allow);
    asm.ret(RET_ALLOW);
    asm.bind(deny);
    asm.ret(RET_EPERM);
    asm.bind(enosys);
    asm.ret(RET_ENOSYS);
    asm.assemble().map(Filter)
}

/// A binary search over `targets` (sorted by number): jumps to the target's label on a match,
/// to `otherwise` when the number is not listed.
fn search(asm: &mut Asm, targets: &[(u32, usize)], otherwise: usize) {
    if targets.len() <= 3 {
        for (nr, label) in targets {
            asm.cond(JEQ, *nr, To::Label(*label), To::Next);
        }
        asm.jump(otherwise);
        return;
    }
    let (low, high) = targets.split_at(targets.len() / 2);
    let upper = asm.label();
    asm.cond(JGE, high[0].0, To::Label(upper), To::Next);
    search(asm, low, otherwise);
    asm.bind(upper);
    search(asm, high, otherwise);
}

impl Filter {
    /// Sets no_new_privs (required for a filter without CAP_SYS_ADMIN) and installs the filter
    /// on the calling thread. Makes no allocation: safe between fork and exec.
    pub(crate) fn install(&self) -> std::io::Result<()> {
        let program = libc::sock_fprog {
            len: self.0.len() as u16,
            filter: self.0.as_ptr().cast::<libc::sock_filter>().cast_mut(),
        };
        // SAFETY: `Insn` has sock_filter's layout; the kernel copies the program.
        unsafe {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0
                || libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    0,
                    &program,
                ) < 0
            {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
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
    use crate::process::bpf::run;
    use crate::process::capabilities::DEFAULT_CAPS;

    fn decide(filter: &Filter, nr: i64, arg0: u64) -> u32 {
        run(
            &filter.0,
            nr as u32,
            AUDIT_ARCH_NATIVE,
            [arg0, 0, 0, 0, 0, 0],
        )
    }

    #[test]
    fn refuses_what_reaches_past_the_sandbox_and_allows_the_rest() {
        let filter = compile(CapMask::of(&DEFAULT_CAPS)).expect("compile");
        for (_, calls) in groups() {
            for nr in calls {
                assert_eq!(decide(&filter, nr, 0), RET_EPERM, "syscall {nr}");
            }
        }
        for nr in [
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_execve,
            libc::SYS_ptrace,
            libc::SYS_socket,
            libc::SYS_wait4,
        ] {
            assert_eq!(decide(&filter, nr, 0), RET_ALLOW, "syscall {nr}");
        }
        // Every number the search could meet, listed or not, gets an answer.
        for nr in 0..600 {
            let action = decide(&filter, nr, 0);
            assert!([RET_ALLOW, RET_EPERM, RET_ENOSYS].contains(&action), "{nr}");
        }
        let fork_flags = (libc::CLONE_CHILD_SETTID | libc::SIGCHLD) as u64;
        assert_eq!(decide(&filter, libc::SYS_clone, fork_flags), RET_ALLOW);
        let thread_flags = (libc::CLONE_VM | libc::CLONE_THREAD | libc::CLONE_SIGHAND) as u64;
        assert_eq!(decide(&filter, libc::SYS_clone, thread_flags), RET_ALLOW);
        for flag in [libc::CLONE_NEWUSER, libc::CLONE_NEWNET, libc::CLONE_NEWNS] {
            let flags = flag as u64 | libc::SIGCHLD as u64;
            assert_eq!(decide(&filter, libc::SYS_clone, flags), RET_EPERM);
            assert_eq!(decide(&filter, libc::SYS_unshare, flag as u64), RET_EPERM);
        }
        assert_eq!(
            decide(&filter, libc::SYS_unshare, CLONE_NEWTIME as u64),
            RET_EPERM
        );
        assert_eq!(
            decide(&filter, libc::SYS_unshare, libc::CLONE_FILES as u64),
            RET_ALLOW
        );
        assert_eq!(decide(&filter, libc::SYS_clone3, 0), RET_ENOSYS);
        assert_eq!(
            decide(&filter, libc::SYS_personality, 0xffff_ffff),
            RET_ALLOW
        );
        assert_eq!(decide(&filter, libc::SYS_personality, 0x0040000), RET_EPERM);
    }

    #[test]
    fn other_abis_get_enosys() {
        let filter = compile(CapMask::of(&DEFAULT_CAPS)).expect("compile");
        const AUDIT_ARCH_I386: u32 = 0x4000_0003;
        assert_eq!(run(&filter.0, 1, AUDIT_ARCH_I386, [0; 6]), RET_ENOSYS);
        #[cfg(target_arch = "x86_64")]
        assert_eq!(
            run(&filter.0, 0x4000_0000 + 272, AUDIT_ARCH_NATIVE, [0; 6]),
            RET_ENOSYS
        );
    }

    #[test]
    fn kept_capabilities_allow_their_calls_again() {
        let admin = compile(CapMask::of(&[Capability::CAP_SYS_ADMIN])).expect("compile");
        assert_eq!(decide(&admin, libc::SYS_mount, 0), RET_ALLOW);
        assert_eq!(
            decide(&admin, libc::SYS_unshare, libc::CLONE_NEWNET as u64),
            RET_ALLOW
        );
        assert_eq!(decide(&admin, libc::SYS_clone3, 0), RET_ALLOW);
        assert_eq!(decide(&admin, libc::SYS_init_module, 0), RET_EPERM);
        assert_eq!(decide(&admin, libc::SYS_keyctl, 0), RET_EPERM);
        let module = compile(CapMask::of(&[Capability::CAP_SYS_MODULE])).expect("compile");
        assert_eq!(decide(&module, libc::SYS_finit_module, 0), RET_ALLOW);
        assert_eq!(decide(&module, libc::SYS_mount, 0), RET_EPERM);
    }

    #[test]
    fn the_program_is_small() {
        let filter = compile(CapMask::of(&DEFAULT_CAPS)).expect("compile");
        assert!(filter.len() < 200, "{}", filter.len());
    }
}
