//! The links, over rtnetlink: the node's bridge (with the gateway address), a veth pair
//! per pod with the host end on the bridge (hairpin on) and the other end made in the
//! pod's network namespace under its final name, addressed and routed there. Work inside
//! the pod happens on a thread that joined its namespace, with a netlink socket opened
//! there.
//!
//! The host end's name is derived from the container and interface, so DEL and GC find
//! it without the pod's namespace (which may be gone by then).

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::Path;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkMessage};
use rtnetlink::{
    Handle, LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth,
    RouteMessageBuilder,
};
use sha2::{Digest, Sha256};

use crate::config::NetConf;
use crate::{Error, code};

const EEXIST: i32 = 17;
const ENODEV: i32 = 19;

/// What ADD made, for the result.
pub struct Attached {
    pub bridge_mac: String,
    pub host_veth: String,
    pub host_mac: String,
    pub pod_mac: String,
}

fn failed(what: impl std::fmt::Display, e: impl std::fmt::Display) -> Error {
    Error::new(code::IO, what.to_string(), e.to_string())
}

/// The netlink error number of `e` (positive), if it is one.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

/// The host end's name: `sk` and a digest of the network, container and interface
/// (host interface names are one namespace for every network and runtime).
pub fn host_veth(network: &str, container: &str, ifname: &str) -> String {
    let digest = Sha256::digest(format!("{network}/{container}/{ifname}"));
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sk{}", &hex[..11])
}

/// The bridge's own address: locally administered, from its name.
fn bridge_mac(name: &str) -> [u8; 6] {
    let digest = Sha256::digest(name.as_bytes());
    [0x0a, digest[0], digest[1], digest[2], digest[3], digest[4]]
}

fn mac(link: &LinkMessage) -> String {
    link.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(bytes) => Some(
                bytes
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(":"),
            ),
            _ => None,
        })
        .unwrap_or_default()
}

fn controller(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Controller(index) => Some(*index),
        _ => None,
    })
}

/// The pod's network namespace (a missing one is the spec's unknown container).
fn open_netns(netns: &Path) -> Result<std::fs::File, Error> {
    std::fs::File::open(netns).map_err(|e| {
        Error::new(
            code::UNKNOWN_CONTAINER,
            format!("opening the pod's network namespace {}", netns.display()),
            e.to_string(),
        )
    })
}

/// Runs `work` with a netlink handle: of this namespace, or of `netns` (on a thread
/// that joined it).
fn with_handle<T: Send>(
    netns: Option<&Path>,
    work: impl AsyncFnOnce(Handle) -> Result<T, Error> + Send,
) -> Result<T, Error> {
    let run = move || -> Result<T, Error> {
        if let Some(netns) = netns {
            let file = open_netns(netns)?;
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                failed(
                    format!("joining the network namespace {}", netns.display()),
                    e,
                )
            })?;
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|e| failed("starting the netlink runtime", e))?;
        runtime.block_on(async move {
            let (connection, handle, _) =
                rtnetlink::new_connection().map_err(|e| failed("opening netlink", e))?;
            tokio::spawn(connection);
            work(handle).await
        })
    };
    match netns {
        None => run(),
        // setns changes only the calling thread: a thread of its own that ends after.
        Some(_) => std::thread::scope(|scope| {
            scope
                .spawn(run)
                .join()
                .unwrap_or_else(|_| Err(failed("netlink thread", "panicked")))
        }),
    }
}

async fn get(handle: &Handle, name: &str) -> Result<Option<LinkMessage>, Error> {
    match handle
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
    {
        Ok(link) => Ok(link),
        Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
        Err(e) => Err(failed(format!("looking up link {name}"), e)),
    }
}

async fn delete(handle: &Handle, name: &str) -> Result<(), Error> {
    if let Some(link) = get(handle, name).await? {
        match handle.link().del(link.header.index).execute().await {
            Ok(()) => {}
            Err(e) if errno(&e) == Some(ENODEV) => {}
            Err(e) => return Err(failed(format!("deleting link {name}"), e)),
        }
    }
    Ok(())
}

async fn add_address(handle: &Handle, index: u32, ip: Ipv4Addr, prefix: u8) -> Result<(), Error> {
    match handle
        .address()
        .add(index, IpAddr::V4(ip), prefix)
        .execute()
        .await
    {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == Some(EEXIST) => Ok(()),
        Err(e) => Err(failed(format!("adding address {ip}/{prefix}"), e)),
    }
}

/// The bridge, made when missing, up, with the gateway address when it is the gateway.
async fn bridge(handle: &Handle, conf: &NetConf) -> Result<LinkMessage, Error> {
    if get(handle, &conf.bridge).await?.is_none() {
        // A fixed address: a bridge otherwise takes its ports' lowest one, which changes
        // as pods come and go and leaves pods with a stale gateway in their ARP cache.
        let bridge = LinkBridge::new(&conf.bridge).address(bridge_mac(&conf.bridge).to_vec());
        match handle.link().add(bridge.build()).execute().await {
            Ok(()) => {}
            // Another ADD made it meanwhile.
            Err(e) if errno(&e) == Some(EEXIST) => {}
            Err(e) => return Err(failed(format!("creating bridge {}", conf.bridge), e)),
        }
    }
    let link = get(handle, &conf.bridge)
        .await?
        .ok_or_else(|| failed(format!("bridge {}", conf.bridge), "vanished"))?;
    let index = link.header.index;
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(|e| failed(format!("setting bridge {} up", conf.bridge), e))?;
    if conf.is_gateway {
        add_address(handle, index, conf.gateway, conf.subnet.prefix_len()).await?;
    }
    Ok(link)
}

/// Connects the pod: bridge, veth pair, the pod's end configured in its namespace.
pub fn add(
    conf: &NetConf,
    container: &str,
    ifname: &str,
    netns: &Path,
    ip: Ipv4Addr,
) -> Result<Attached, Error> {
    let host = host_veth(&conf.name, container, ifname);
    let namespace = open_netns(netns)?;
    let (bridge_mac, host_mac) = with_handle(None, async |handle| {
        let bridge = bridge(&handle, conf).await?;
        // A half-made pair from an earlier, failed ADD goes first.
        delete(&handle, &host).await?;
        // The pod's end is made in the pod's namespace under its final name: moving a
        // link between namespaces waits for the kernel's RCU grace period (~20 ms).
        let mut peer = LinkUnspec::new_with_name(ifname).setns_by_fd(namespace.as_raw_fd());
        let mut pair =
            LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth).name(host.clone());
        if let Some(mtu) = conf.mtu {
            peer = peer.mtu(mtu);
            pair = pair.mtu(mtu);
        }
        let pair = pair.set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())));
        handle
            .link()
            .add(pair.build())
            .execute()
            .await
            .map_err(|e| {
                failed(
                    format!("creating veth pair {host} / {ifname} in the pod"),
                    e,
                )
            })?;
        let host_link = get(&handle, &host)
            .await?
            .ok_or_else(|| failed(format!("veth {host}"), "vanished"))?;
        let index = host_link.header.index;
        handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .controller(bridge.header.index)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(|e| failed(format!("attaching {host} to {}", conf.bridge), e))?;
        if conf.hairpin_mode {
            handle
                .link()
                .set_port(LinkBridgePort::new(index).hairpin(true).build())
                .execute()
                .await
                .map_err(|e| failed(format!("hairpin mode on {host}"), e))?;
        }
        let bridge_now = get(&handle, &conf.bridge).await?.unwrap_or(bridge);
        Ok((mac(&bridge_now), mac(&host_link)))
    })?;
    let pod_mac = with_handle(Some(netns), async |handle| {
        let link = get(&handle, ifname)
            .await?
            .ok_or_else(|| failed(format!("veth {ifname} in the pod"), "not found"))?;
        let index = link.header.index;
        handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| failed(format!("setting the pod's interface {ifname} up"), e))?;
        add_address(&handle, index, ip, conf.subnet.prefix_len()).await?;
        for route in &conf.routes {
            let gateway = route.gw.unwrap_or(conf.gateway);
            let message = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(route.dst.addr(), route.dst.prefix_len())
                .gateway(gateway)
                .output_interface(index)
                .build();
            match handle.route().add(message).execute().await {
                Ok(()) => {}
                Err(e) if errno(&e) == Some(EEXIST) => {}
                Err(e) => {
                    return Err(failed(
                        format!("adding route {} via {gateway}", route.dst),
                        e,
                    ));
                }
            }
        }
        Ok(mac(&link))
    })?;
    Ok(Attached {
        bridge_mac,
        host_veth: host,
        host_mac,
        pod_mac,
    })
}

/// Removes the pod's veth pair (deleting the host end deletes both); gone is fine.
pub fn del(conf: &NetConf, container: &str, ifname: &str) -> Result<(), Error> {
    let host = host_veth(&conf.name, container, ifname);
    with_handle(None, async |handle| delete(&handle, &host).await)
}

/// Whether the pod is connected as ADD left it: its interface has `ip`, the host end
/// is on the bridge.
pub fn check(
    conf: &NetConf,
    container: &str,
    ifname: &str,
    netns: &Path,
    ip: Ipv4Addr,
) -> Result<(), Error> {
    let host = host_veth(&conf.name, container, ifname);
    with_handle(None, async |handle| {
        let bridge = get(&handle, &conf.bridge)
            .await?
            .ok_or_else(|| failed("check", format!("bridge {} is missing", conf.bridge)))?;
        let veth = get(&handle, &host).await?.ok_or_else(|| {
            failed(
                "check",
                format!("the pod's host interface {host} is missing"),
            )
        })?;
        if controller(&veth) != Some(bridge.header.index) {
            return Err(failed(
                "check",
                format!("{host} is not on bridge {}", conf.bridge),
            ));
        }
        Ok(())
    })?;
    with_handle(Some(netns), async |handle| {
        let link = get(&handle, ifname)
            .await?
            .ok_or_else(|| failed("check", format!("the pod has no interface {ifname}")))?;
        let addresses: Vec<_> = handle
            .address()
            .get()
            .set_link_index_filter(link.header.index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| failed("listing the pod's addresses", e))?;
        let has = addresses.iter().any(|a| {
            a.header.prefix_len == conf.subnet.prefix_len()
                && a.attributes.iter().any(
                    |attr| matches!(attr, AddressAttribute::Address(IpAddr::V4(v4)) if *v4 == ip),
                )
        });
        if has {
            Ok(())
        } else {
            Err(failed(
                "check",
                format!("{ifname} does not have {ip}/{}", conf.subnet.prefix_len()),
            ))
        }
    })
}

/// Whether netlink answers (STATUS): the bridge itself is made by the first ADD.
pub fn ready(conf: &NetConf) -> Result<(), Error> {
    with_handle(None, async |handle| {
        get(&handle, &conf.bridge).await.map(drop)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn host_names_fit_and_differ() {
        let a = super::host_veth("net", "0123456789abcdef", "eth0");
        let b = super::host_veth("net", "0123456789abcdef", "eth1");
        assert_ne!(a, super::host_veth("other", "0123456789abcdef", "eth0"));
        assert_eq!(a.len(), 13);
        assert!(a.len() <= 15 && a.starts_with("sk"));
        assert_ne!(a, b);
    }
}
