//! The UDP sockets of a transparent DNS proxy: the TPROXY listener that
//! reports each datagram's original destination (`IP_RECVORIGDSTADDR`),
//! reply sockets bound to that destination (so the client sees the answer
//! come from its resolver), and upstream sockets bound to the client's
//! address (so the resolver's policy sees the real source).

use crate::config::UPSTREAM_MARK;
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;

/// The UDP listener: `0.0.0.0:port`, `IP_TRANSPARENT`, `SO_REUSEADDR`,
/// `IP_RECVORIGDSTADDR`, non-blocking.
pub fn udp_listener(port: u16, transparent: bool) -> io::Result<std::net::UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    if transparent {
        s.set_ip_transparent_v4(true)?;
    }
    let on: libc::c_int = 1;
    // SAFETY: a valid socket and a c_int option value of the right size.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_IP,
            libc::IP_RECVORIGDSTADDR,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let _ = s.set_recv_buffer_size(4 << 20);
    s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// One `recvmsg`: bytes read, the sender and the original destination
/// (falls back to `fallback` when the kernel gave none).
pub fn recv_with_orig_dst(
    sock: &impl AsRawFd,
    buf: &mut [u8],
    fallback: SocketAddr,
) -> io::Result<(usize, SocketAddr, SocketAddr)> {
    // SAFETY: zeroed plain-old-data structures.
    let mut src: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut cmsg_buf = [0u64; 16];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: zeroed msghdr, then every pointer set to live buffers above.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut src as *mut libc::sockaddr_in).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg_buf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cmsg_buf) as _;
    // SAFETY: msg points to valid buffers for the duration of the call.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let from = SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(src.sin_addr.s_addr)),
        u16::from_be(src.sin_port),
    ));
    let mut dst = fallback;
    // SAFETY: iterating the control messages the kernel wrote into msg.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_IP && (*c).cmsg_type == libc::IP_ORIGDSTADDR {
                let sin: libc::sockaddr_in = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                dst = SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                    u16::from_be(sin.sin_port),
                ));
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((n as usize, from, dst))
}

/// A socket bound to `local` (transparent, so it may be the resolver's
/// address that is not local here) to send answers from.
pub fn reply_socket(local: SocketAddr) -> io::Result<tokio::net::UdpSocket> {
    let s = Socket::new(Domain::for_address(local), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    if local.is_ipv4() {
        s.set_ip_transparent_v4(true)?;
    }
    s.bind(&local.into())?;
    s.set_nonblocking(true)?;
    tokio::net::UdpSocket::from_std(s.into())
}

/// A connected upstream socket to `dst`, from `source` (transparent, port
/// chosen by the kernel) when given, marked [`UPSTREAM_MARK`].
pub fn upstream_socket(
    dst: SocketAddr,
    source: Option<IpAddr>,
) -> io::Result<tokio::net::UdpSocket> {
    let s = Socket::new(Domain::for_address(dst), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_mark(UPSTREAM_MARK)?;
    match source {
        Some(src) => {
            if src.is_ipv4() {
                s.set_ip_transparent_v4(true)?;
            }
            s.bind(&SocketAddr::new(src, 0).into())?;
        }
        None => {
            let any: IpAddr = if dst.is_ipv4() {
                Ipv4Addr::UNSPECIFIED.into()
            } else {
                std::net::Ipv6Addr::UNSPECIFIED.into()
            };
            s.bind(&SocketAddr::new(any, 0).into())?;
        }
    }
    s.connect(&dst.into())?;
    s.set_nonblocking(true)?;
    tokio::net::UdpSocket::from_std(s.into())
}
