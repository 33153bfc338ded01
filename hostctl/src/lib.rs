//! `smvs-hostctl`: many users' hosts on one machine, for whoever hosts SMVS for others.
//!
//! Each hosted user NAME gets what a machine of their own would run, under uids of their own:
//!
//! ```text
//!   smvs-keyguard@NAME.service  user smvskg-NAME   /var/lib/smvs-hosts/NAME/keyguard (0700)
//!        ▲ /run/smvs-hosts/NAME/keyguard/keyguard.sock (dir 0750, group smvskg-NAME)
//!   smvsd@NAME.service          user smvsd-NAME    /var/lib/smvs-hosts/NAME/host (0700)
//!        ▲ /run/smvs-hosts/NAME/host/smvsd.sock (dir 0700: root and the host only)
//!   /etc/smvs/hosts/NAME.toml   its config (root:smvsd-NAME 0640), made from
//!                               /etc/smvs/hosting.toml (the directory, the public name, ports)
//! ```
//!
//! The template units (`dist/systemd/smvsd@.service`, `smvs-keyguard@.service`) carry the single
//! units' sandbox plus memory, task and CPU limits, in `smvs-hosts.slice`. This crate provisions
//! (`add`), reports (`list`), destroys (`remove`) and copies (`backup`, `restore`) such hosts; the
//! layers, bottom to top: [`layout`] (names and paths) → [`hosting`] (the operator's config, a
//! host's config, ports) → [`system`] (users, files, systemctl) and [`host_api`] (a host's
//! socket) and [`backup`] (the sealed archive format) → [`commands`].

pub mod backup;
pub mod cli;
pub mod commands;
pub mod host_api;
pub mod hosting;
pub mod layout;
pub mod system;
