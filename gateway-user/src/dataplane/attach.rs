//! Putting the programs on interfaces: one attach path for both kinds of program, with or
//! without a pinned link (which also takes over the link an earlier agent pinned).

use std::{fmt, path::PathBuf};

use aya::programs::{
    LinkOrder, ProgramError, SchedClassifier, TcAttachType, Xdp,
    links::{FdLink, PinnedLink},
    tc::{SchedClassifierLink, SchedClassifierLinkId, TcAttachOptions},
    xdp::{XdpLink, XdpLinkId, XdpMode as AyaXdpMode},
};
use gateway_common::names;

use super::{Dataplane, DataplaneError, Loadable, pins::pin_link, program};
use crate::{
    config::{Hook, XdpMode},
    system,
};

/// The hook a program ended up on, for logs and status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachedHook {
    XdpNative,
    XdpGeneric,
    Tc,
}

impl fmt::Display for AttachedHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttachedHook::XdpNative => "xdp (native)",
            AttachedHook::XdpGeneric => "xdp (generic)",
            AttachedHook::Tc => "tc (tcx ingress)",
        })
    }
}

/// One program attached to one interface. Detached by [`Dataplane::detach`], or when the
/// `Dataplane` is dropped (the kernel also detaches when the process dies).
#[derive(Debug)]
pub struct Attachment {
    pub interface: String,
    pub hook: AttachedHook,
    link: Link,
}

#[derive(Debug)]
enum Link {
    Xdp(XdpLinkId),
    Tc(SchedClassifierLinkId),
    /// Pinned at this path: it outlives the agent unless detached.
    Pinned(PathBuf),
}

/// A kind of program the fast path attaches: what differs between XDP and TC.
trait Attachable: Loadable + Sized {
    /// The program's name in the object.
    const PROGRAM: &'static str;
    /// Its link pins are `<interface>-<PIN>`; the other kind's are `<interface>-<OTHER_PIN>`.
    const PIN: &'static str;
    const OTHER_PIN: &'static str;
    /// How to attach (XDP: the mode).
    type How: Copy;
    type LinkId;

    /// A new link; `pinnable`: one that is a bpf link, which can be pinned.
    fn attach_new(
        &mut self,
        interface: &str,
        how: Self::How,
        pinnable: bool,
    ) -> Result<Self::LinkId, ProgramError>;
    /// Puts this program into an earlier agent's link, atomically.
    fn attach_to_old(&mut self, old: FdLink) -> Result<Self::LinkId, ProgramError>;
    /// The link, out of the program's keeping, to be pinned.
    fn take_fd_link(&mut self, id: Self::LinkId) -> Result<FdLink, ProgramError>;
    fn link(id: Self::LinkId) -> Link;
}

/// A link conversion's error, as the program error the attach reports.
fn link_error(err: impl fmt::Display) -> ProgramError {
    ProgramError::IOError(std::io::Error::other(err.to_string()))
}

impl Attachable for Xdp {
    const PROGRAM: &'static str = names::PROG_XDP;
    const PIN: &'static str = "xdp";
    const OTHER_PIN: &'static str = "tc";
    type How = AyaXdpMode;
    type LinkId = XdpLinkId;

    fn attach_new(
        &mut self,
        interface: &str,
        mode: AyaXdpMode,
        _pinnable: bool,
    ) -> Result<XdpLinkId, ProgramError> {
        self.attach(interface, mode)
    }

    fn attach_to_old(&mut self, old: FdLink) -> Result<XdpLinkId, ProgramError> {
        self.attach_to_link(XdpLink::try_from(old).map_err(link_error)?)
    }

    fn take_fd_link(&mut self, id: XdpLinkId) -> Result<FdLink, ProgramError> {
        self.take_link(id)?.try_into().map_err(link_error)
    }

    fn link(id: XdpLinkId) -> Link {
        Link::Xdp(id)
    }
}

impl Attachable for SchedClassifier {
    const PROGRAM: &'static str = names::PROG_TC;
    const PIN: &'static str = "tc";
    const OTHER_PIN: &'static str = "xdp";
    type How = ();
    type LinkId = SchedClassifierLinkId;

    fn attach_new(
        &mut self,
        interface: &str,
        (): (),
        pinnable: bool,
    ) -> Result<SchedClassifierLinkId, ProgramError> {
        // On kernels >= 6.6 aya attaches through TCX links, which need no clsact qdisc; a
        // link to pin must be one.
        if pinnable {
            self.attach_with_options(
                interface,
                TcAttachType::Ingress,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
        } else {
            self.attach(interface, TcAttachType::Ingress)
        }
    }

    fn attach_to_old(&mut self, old: FdLink) -> Result<SchedClassifierLinkId, ProgramError> {
        self.attach_to_link(SchedClassifierLink::try_from(old).map_err(link_error)?)
    }

    fn take_fd_link(&mut self, id: SchedClassifierLinkId) -> Result<FdLink, ProgramError> {
        self.take_link(id)?.try_into().map_err(link_error)
    }

    fn link(id: SchedClassifierLinkId) -> Link {
        Link::Tc(id)
    }
}

impl Dataplane {
    /// Attaches the fast path to `interface` on the hook that `hook` and `xdp_mode` select.
    ///
    /// `Auto` puts TC on virtual devices and native XDP on NICs; a NIC whose driver has no
    /// native XDP falls back to TC. A forced `xdp_mode` means XDP in that mode.
    pub fn attach(
        &mut self,
        interface: &str,
        hook: Hook,
        xdp_mode: Option<XdpMode>,
    ) -> Result<Attachment, DataplaneError> {
        match (hook, xdp_mode) {
            (Hook::Tc, _) => self.attach_tc(interface),
            (Hook::Xdp, mode) | (Hook::Auto, mode @ Some(_)) => {
                self.attach_xdp(interface, mode.unwrap_or(XdpMode::Native))
            }
            (Hook::Auto, None) => {
                let driver = system::driver_info(interface);
                match &driver {
                    Ok(info) if !info.is_virtual() => {
                        match self.attach_xdp(interface, XdpMode::Native) {
                            Ok(attachment) => Ok(attachment),
                            Err(err) => {
                                tracing::warn!(
                                    interface, driver = %info.driver, error = %err,
                                    "native XDP unavailable, falling back to TC"
                                );
                                self.attach_tc(interface)
                            }
                        }
                    }
                    _ => {
                        let driver = driver
                            .map(|info| info.driver)
                            .unwrap_or_else(|err| format!("unknown ({err})"));
                        tracing::debug!(interface, %driver, "virtual device: using TC");
                        self.attach_tc(interface)
                    }
                }
            }
        }
    }

    fn attach_xdp(&mut self, interface: &str, mode: XdpMode) -> Result<Attachment, DataplaneError> {
        match mode {
            XdpMode::Native => {
                self.attach_program::<Xdp>(interface, AttachedHook::XdpNative, AyaXdpMode::Driver)
            }
            XdpMode::Generic => {
                self.attach_program::<Xdp>(interface, AttachedHook::XdpGeneric, AyaXdpMode::Skb)
            }
        }
    }

    fn attach_tc(&mut self, interface: &str) -> Result<Attachment, DataplaneError> {
        self.attach_program::<SchedClassifier>(interface, AttachedHook::Tc, ())
    }

    /// The one attach path. Without pinning, a link the program keeps (and the kernel
    /// detaches with the process); with pinning, a link pinned for the next agent, which
    /// takes over the one an earlier agent pinned (its program replaced in place, atomically,
    /// so that no packet passes untranslated meanwhile).
    fn attach_program<P>(
        &mut self,
        interface: &str,
        hook: AttachedHook,
        how: P::How,
    ) -> Result<Attachment, DataplaneError>
    where
        P: Attachable,
        for<'a> &'a mut P: TryFrom<&'a mut aya::programs::Program>,
    {
        let attach_error = |source| DataplaneError::Attach {
            hook,
            interface: interface.to_owned(),
            source,
        };
        let pin = self.link_pin(interface, P::PIN, P::OTHER_PIN)?;
        let program = program::<P>(&mut self.ebpf, P::PROGRAM)?;
        let Some(pin) = pin else {
            let link_id = program
                .attach_new(interface, how, false)
                .map_err(attach_error)?;
            return Ok(Attachment {
                interface: interface.to_owned(),
                hook,
                link: P::link(link_id),
            });
        };
        let link_id = match pin.previous {
            Some(old) => program.attach_to_old(old),
            None => program.attach_new(interface, how, true),
        }
        .map_err(attach_error)?;
        let fd_link = program.take_fd_link(link_id).map_err(attach_error)?;
        pin_link(fd_link, &pin.path)?;
        Ok(Attachment {
            interface: interface.to_owned(),
            hook,
            link: Link::Pinned(pin.path),
        })
    }

    /// Detaches; a pinned link is unpinned first, so that it does not outlive the agent.
    pub fn detach(&mut self, attachment: Attachment) -> Result<(), ProgramError> {
        match attachment.link {
            Link::Pinned(path) => {
                let link = PinnedLink::from_pin(&path).map_err(link_error)?;
                drop(link.unpin()?);
                Ok(())
            }
            Link::Xdp(link) => self
                .xdp()
                .map_err(|_| ProgramError::NotAttached)?
                .detach(link),
            Link::Tc(link) => self
                .tc()
                .map_err(|_| ProgramError::NotAttached)?
                .detach(link),
        }
    }
}
