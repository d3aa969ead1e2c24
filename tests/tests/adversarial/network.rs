//! Network: no socket but `AF_UNIX`, in any form a job can ask for — TCP, UDP, raw ICMP,
//! netlink, packet, vsock, DNS, a socket made through io_uring — and, of Unix sockets, none
//! that reach the executor or the host's services.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{SocketAddr, UnixListener};
use std::time::Duration;

use nox_e2e::{Nox, unique};

use super::common::{self, PY_SYSCALL, assert_serving, py, stdout};

#[test]
fn tcp_to_the_frontend_port_is_refused_in_python_and_in_bash() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let port = nox.url().rsplit(':').next().unwrap_or_default().to_owned();
    let code = format!(
        "import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n    print('CONNECTED')\nexcept OSError as e:\n    print('errno', e.errno)\n"
    );
    let reply = py(nox, &code, 10.0);
    assert_eq!(stdout(&reply), "errno 1\n", "{reply}");
    let reply = common::sh(
        nox,
        &format!(
            "bash -c 'echo x > /dev/tcp/127.0.0.1/{port}' 2>/dev/null && echo CONNECTED; echo end"
        ),
        10.0,
    );
    assert_eq!(stdout(&reply), "end\n", "{reply}");
    assert_serving(nox);
}

#[test]
fn udp_to_a_public_dns_server_is_refused() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let code = r#"
import socket
for family, address in [(socket.AF_INET, ("8.8.8.8", 53)), (socket.AF_INET6, ("2001:4860:4860::8888", 53))]:
    try:
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.sendto(b"x", address)
        print("SENT")
    except OSError as e:
        print("errno", e.errno)
"#;
    let reply = py(nox, code, 10.0);
    assert_eq!(stdout(&reply), "errno 1\nerrno 1\n", "{reply}");
    assert_serving(nox);
}

#[test]
fn raw_icmp_and_ping_sockets_are_refused() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let code = r#"
import socket
for family, kind, proto in [
    (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),
    (socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP),
    (socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6),
    (socket.AF_INET6, socket.SOCK_DGRAM, socket.IPPROTO_ICMPV6),
    (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW),
]:
    try:
        socket.socket(family, kind, proto).close()
        print("OPENED", family, kind, proto)
    except OSError as e:
        print("errno", e.errno)
"#;
    let reply = py(nox, code, 10.0);
    assert_eq!(stdout(&reply), "errno 1\n".repeat(5), "{reply}");
    assert_serving(nox);
}

#[test]
fn every_address_family_but_unix_is_refused_for_socket_and_socketpair() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    // AF_NETLINK (16), AF_PACKET (17), AF_VSOCK (40), AF_ALG (38), AF_XDP (44), AF_RDS (21),
    // AF_TIPC (30), AF_KEY (15), AF_BLUETOOTH (31), AF_CAN (29), ... and the unassigned ones.
    let code = format!(
        r#"{PY_SYSCALL}
allowed = []
for family in range(0, 64):
    if family == 1:
        continue
    for kind in (1, 2, 3, 5):
        for protocol in (0, 1):
            result, errno = call(41, family, kind, protocol)
            if result >= 0 or errno != 1:
                allowed.append(("socket", family, kind, protocol, errno))
            if result >= 0:
                os.close(result)
    pair = (ctypes.c_int * 2)()
    result, errno = call(53, family, 1, 0, pair)
    if result >= 0 or errno != 1:
        allowed.append(("socketpair", family, errno))
print(allowed)
result, errno = call(41, 1, 1, 0)
print("unix", result >= 0)
"#
    );
    let reply = py(nox, &code, 20.0);
    assert_eq!(stdout(&reply), "[]\nunix True\n", "{reply}");
    assert_serving(nox);
}

#[test]
fn af_vsock_netlink_and_packet_are_refused_by_name() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let code = r#"
import socket
for name, family, kind, proto in [
    ("vsock", 40, socket.SOCK_STREAM, 0),
    ("vsock-dgram", 40, socket.SOCK_DGRAM, 0),
    ("netlink-route", socket.AF_NETLINK, socket.SOCK_RAW, 0),
    ("netlink-audit", socket.AF_NETLINK, socket.SOCK_RAW, 9),
    ("netlink-uevent", socket.AF_NETLINK, socket.SOCK_DGRAM, 15),
    ("packet", 17, socket.SOCK_RAW, 0x0300),
]:
    try:
        socket.socket(family, kind, proto).close()
        print(name, "OPENED")
    except OSError as e:
        print(name, e.errno)
"#;
    let reply = py(nox, code, 10.0);
    assert_eq!(
        stdout(&reply),
        "vsock 1\nvsock-dgram 1\nnetlink-route 1\nnetlink-audit 1\nnetlink-uevent 1\npacket 1\n",
        "{reply}"
    );
    assert_serving(nox);
}

#[test]
fn dns_resolution_of_a_public_name_fails() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let code = "import socket\ntry:\n    print('RESOLVED', socket.getaddrinfo('example.com', 443))\nexcept OSError as e:\n    print('failed', type(e).__name__)\n";
    let reply = py(nox, code, 15.0);
    assert_eq!(stdout(&reply), "failed gaierror\n", "{reply}");
    assert_serving(nox);
}

#[test]
fn a_socket_cannot_be_made_through_io_uring() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    // IORING_OP_SOCKET (since 5.19) would make a socket seccomp never sees: the ring itself
    // must not exist.
    let code = format!(
        "{PY_SYSCALL}\nparams = ctypes.create_string_buffer(120)\nprint('setup', *call(425, 8, params))\n"
    );
    let reply = py(nox, &code, 10.0);
    assert_eq!(stdout(&reply), "setup -1 1\n", "{reply}");
    assert_serving(nox);
}

#[test]
fn a_job_connecting_to_the_executor_socket_gets_no_answer() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let hello = common::frame(
        &nox_protocol::codec::encode_payload(&nox_protocol::Request::Hello(nox_protocol::Hello {
            version: nox_protocol::PROTOCOL_VERSION,
            software: "a hostile job".into(),
        }))
        .expect("encode"),
    );
    let code = format!(
        r#"
import socket
s = socket.socket(socket.AF_UNIX)
s.settimeout(5)
try:
    s.connect({socket:?})
except OSError as e:
    print("connect refused", e.errno)
else:
    try:
        s.sendall(bytes.fromhex({hello:?}))
        data = s.recv(4096)
        print("answered" if data else "closed without an answer")
    except OSError as e:
        print("closed without an answer", e.errno)
"#,
        socket = nox.executor_socket().display().to_string(),
        hello = hello.iter().map(|b| format!("{b:02x}")).collect::<String>(),
    );
    let reply = py(nox, &code, 15.0);
    let out = stdout(&reply);
    assert!(
        out.starts_with("connect refused") || out.starts_with("closed without an answer"),
        "a job talked to the executor: {reply}"
    );
    assert_serving(nox);
}

#[test]
fn a_job_cannot_connect_to_an_abstract_socket_of_the_host() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    use std::os::linux::net::SocketAddrExt;
    let name = unique("nox-adv-abstract");
    let address = SocketAddr::from_abstract_name(name.as_bytes()).expect("an abstract address");
    let listener = UnixListener::bind_addr(&address).expect("bind an abstract socket");
    listener.set_nonblocking(true).expect("nonblocking");
    let code = format!(
        "import socket\ns = socket.socket(socket.AF_UNIX)\ntry:\n    s.connect('\\0{name}')\n    print('CONNECTED')\nexcept OSError as e:\n    print('errno', e.errno)\n"
    );
    let reply = py(nox, &code, 10.0);
    let accepted = listener.accept().is_ok();
    assert!(
        !accepted,
        "the host's abstract socket accepted a job's connection"
    );
    // Abstract names belong to a network namespace: in the executor's own (or the unit's
    // PrivateNetwork=) the host's name is not there (ECONNREFUSED); in the host's, the
    // Landlock scope refuses it (EPERM). Between jobs, in one namespace, the scope is
    // what holds (side_channels).
    let out = stdout(&reply);
    assert!(out == "errno 111\n" || out == "errno 1\n", "{reply}");
    assert_serving(nox);
}

/// Landlock (ABI 7) does not govern `connect()` to a pathname socket: what keeps a job from
/// it is that the socket is not in its view. Under systemd the unit hides the host's `/run`
/// (tests/boot/run.sh); here, outside systemd, the executor's own mount namespace holds only
/// the system directories, the state directory and the workspace root.
#[test]
fn a_job_cannot_connect_to_a_unix_socket_of_the_host_outside_its_workspace() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    // Like D-Bus's /run/dbus/system_bus_socket or journald's /dev/log: a world-writable
    // socket of a host service, at a path the job can name.
    let path = nox.dir().join(format!("{}.sock", unique("host-service")));
    let listener = UnixListener::bind(&path).expect("bind a host socket");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    listener.set_nonblocking(true).expect("nonblocking");
    let code = format!(
        "import socket\ns = socket.socket(socket.AF_UNIX)\ntry:\n    s.connect({path:?})\n    s.sendall(b'hello from a job')\n    print('CONNECTED')\nexcept OSError as e:\n    print('errno', e.errno)\n",
        path = path.display().to_string()
    );
    let reply = py(nox, &code, 10.0);
    std::thread::sleep(Duration::from_millis(100));
    let mut received = String::new();
    if let Ok((mut stream, _)) = listener.accept() {
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let _ = stream.read_to_string(&mut received);
        received = format!("accepted a connection ({received:?})");
    }
    let _ = std::fs::remove_file(&path);
    assert!(
        received.is_empty() && stdout(&reply).starts_with("errno"),
        "a job reached a host service's Unix socket outside its workspace: {received} / {reply}"
    );
    assert_serving(nox);
}
