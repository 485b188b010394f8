//! Who CMD runs as: `--user NAME|UID[:GROUP]`, resolved from the passwd and group databases
//! before the fork (the child only calls setgroups/setresgid/setresuid with the result).

use std::ffi::CString;
use std::path::PathBuf;

use super::{ProcessError, Result};

/// The user CMD runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSpec {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (from the group database when a name was given).
    pub groups: Vec<u32>,
    pub name: Option<String>,
    pub home: Option<PathBuf>,
}

impl UserSpec {
    /// Parses `NAME`, `UID` or `UID:GID` (a numeric uid need not exist in /etc/passwd).
    pub fn parse(spec: &str) -> Result<UserSpec> {
        let invalid = |reason: &str| ProcessError::Invalid {
            what: "user",
            value: spec.into(),
            reason: reason.into(),
        };
        let (user_part, group_part) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        if user_part.is_empty() {
            return Err(invalid("empty user"));
        }
        let mut user = match user_part.parse::<u32>() {
            Ok(uid) => match nix::unistd::User::from_uid(uid.into()).ok().flatten() {
                Some(u) => from_passwd(&u),
                None => UserSpec {
                    uid,
                    gid: uid,
                    groups: vec![],
                    name: None,
                    home: None,
                },
            },
            Err(_) => match nix::unistd::User::from_name(user_part).ok().flatten() {
                Some(u) => from_passwd(&u),
                None => return Err(ProcessError::UnknownUser(user_part.into())),
            },
        };
        if let Some(group) = group_part {
            user.gid = match group.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => nix::unistd::Group::from_name(group)
                    .ok()
                    .flatten()
                    .map(|g| g.gid.as_raw())
                    .ok_or_else(|| invalid("no such group"))?,
            };
            user.groups = vec![user.gid];
        }
        Ok(user)
    }

    /// The user who invoked netbox through sudo (SUDO_UID/SUDO_GID), if any and not root.
    pub fn from_sudo_env() -> Option<UserSpec> {
        if !nix::unistd::geteuid().is_root() {
            return None;
        }
        let uid: u32 = std::env::var("SUDO_UID").ok()?.parse().ok()?;
        if uid == 0 {
            return None;
        }
        let gid: Option<u32> = std::env::var("SUDO_GID").ok().and_then(|g| g.parse().ok());
        let mut user = UserSpec::parse(&uid.to_string()).ok()?;
        if let Some(gid) = gid {
            user.gid = gid;
        }
        Some(user)
    }
}

fn from_passwd(u: &nix::unistd::User) -> UserSpec {
    let mut groups = vec![u.gid.as_raw()];
    if let Ok(name) = CString::new(u.name.as_bytes()) {
        if let Ok(list) = nix::unistd::getgrouplist(&name, u.gid) {
            groups = list.into_iter().map(|g| g.as_raw()).collect();
        }
    }
    UserSpec {
        uid: u.uid.as_raw(),
        gid: u.gid.as_raw(),
        groups,
        name: Some(u.name.clone()),
        home: Some(u.dir.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_users_need_not_exist() {
        let u = UserSpec::parse("54321:54322").expect("parse");
        assert_eq!((u.uid, u.gid), (54321, 54322));
        assert!(UserSpec::parse("").is_err());
        assert!(matches!(
            UserSpec::parse("no-such-user-netbox"),
            Err(ProcessError::UnknownUser(_))
        ));
    }
}
