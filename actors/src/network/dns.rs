//! Cluster DNS, what CoreDNS is in Kubernetes: pods resolve
//! `SVC.NS.svc.ZONE` to a service's virtual IP (its ready endpoints for a
//! headless service, a CNAME for an ExternalName one) and
//! `_PORT._PROTO.SVC.NS.svc.ZONE` to SRV records, from the node's
//! [`ServiceTable`]; every name outside the zone is relayed to the host's
//! nameservers, so a pod needs this one resolver only. [`answer`] decides,
//! as a pure function; [`DnsServer`] serves it over UDP and TCP with
//! hickory-server.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Edns, Header, HeaderCounts, Message, MessageType, Metadata, OpCode, Query, ResponseCode};
use hickory_server::proto::rr::rdata::{A, CNAME, SOA, SRV};
use hickory_server::proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use hickory_server::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{oneshot, Semaphore};
use tokio::task::JoinHandle;
use tracing::{debug, warn, Instrument};

use super::service_table::{ServiceEntry, ServiceTable};

/// TTL of every record answered from the table. Short, because endpoints
/// come and go and clients cache what they are told.
pub const RECORD_TTL_SECS: u32 = 5;
/// How long one upstream nameserver gets to answer a relayed query (UDP,
/// plus the TCP retry of a truncated reply) before the next one is tried.
pub const UPSTREAM_TIMEOUT_SECS: u64 = 2;
/// The largest DNS message read from an upstream; TCP's 16-bit length
/// prefix allows no more.
pub const MAX_MESSAGE_BYTES: usize = 65_535;
/// How long a client's TCP connection may stay idle before it is closed.
const TCP_IDLE_TIMEOUT_SECS: u64 = 10;
/// Responses queued per TCP client connection.
const TCP_RESPONSE_QUEUE_MESSAGES: usize = 32;
/// Relayed queries in flight at once. Each holds a socket for up to the
/// upstream deadline, so a flood is answered SERVFAIL rather than allowed
/// to exhaust the node's file descriptors.
const MAX_FORWARDS_IN_FLIGHT: usize = 512;
/// CNAME hops followed inside the zone (an ExternalName naming another
/// service), so that services naming each other in a loop still answer.
const MAX_CNAME_HOPS: usize = 8;
/// Tries at finding a port free for both UDP and TCP when binding port 0.
const BIND_ATTEMPTS: usize = 16;
/// SRV priority and weight: one target per port, so any values serve.
const SRV_PRIORITY: u16 = 0;
const SRV_WEIGHT: u16 = 100;
const DNS_PORT: u16 = 53;
const RESOLV_CONF_PATH: &str = "/etc/resolv.conf";

/// What cluster DNS says about one name and type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The answer section, in order (a CNAME before what it points to).
    Records(Vec<Record>),
    /// The name does not exist in the zone.
    NxDomain,
    /// The name exists but has no records of the type asked.
    NoData,
    /// The name is outside the zone: the upstream nameservers answer it.
    Forward,
}

/// Answers `name` (any case, with or without the trailing dot) of type
/// `qtype` in `zone` (e.g. `cluster.local`) from `table`, following the
/// Kubernetes DNS specification for services.
pub fn answer(table: &ServiceTable, zone: &str, name: &str, qtype: RecordType) -> Answer {
    answer_within(table, &canonical(zone), name, qtype, MAX_CNAME_HOPS)
}

fn answer_within(table: &ServiceTable, zone: &str, name: &str, qtype: RecordType, hops: usize) -> Answer {
    let lower = canonical(name);
    let Some(labels) = labels_under(zone, &lower) else { return Answer::Forward };
    match labels.as_slice() {
        [] if qtype == RecordType::SOA => soa_record(zone).map_or(Answer::NoData, |soa| Answer::Records(vec![soa])),
        // Interior nodes exist (NOERROR without records), so resolvers walking
        // the search list do not conclude the whole subtree is absent.
        [] | ["svc"] => Answer::NoData,
        [ns, "svc"] if namespace_exists(table, ns) => Answer::NoData,
        [svc, ns, "svc"] => match table.get(ns, svc) {
            Some(entry) => service_answer(table, zone, name, entry, qtype, hops),
            None => Answer::NxDomain,
        },
        [proto, svc, ns, "svc"] => match table.get(ns, svc) {
            Some(entry) if entry.ports.iter().any(|p| !p.name.is_empty() && label_is(proto, p.protocol.lower())) => Answer::NoData,
            _ => Answer::NxDomain,
        },
        [port, proto, svc, ns, "svc"] => match table.get(ns, svc) {
            Some(entry) => srv_answer(zone, name, entry, port, proto, qtype),
            None => Answer::NxDomain,
        },
        _ => Answer::NxDomain,
    }
}

/// Lower case without the trailing dot: the form names are compared in.
fn canonical(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The labels of `lower` left of `zone`, or None when it is outside.
fn labels_under<'a>(zone: &str, lower: &'a str) -> Option<Vec<&'a str>> {
    if lower == zone {
        return Some(Vec::new());
    }
    let rest = lower.strip_suffix(zone)?.strip_suffix('.')?;
    Some(rest.split('.').collect())
}

fn namespace_exists(table: &ServiceTable, ns: &str) -> bool {
    table.services.range((ns.to_string(), String::new())..).next().is_some_and(|((n, _), _)| n == ns)
}

/// Whether an SRV label (`_http`, `_tcp`) names `name`.
fn label_is(label: &str, name: &str) -> bool {
    label.strip_prefix('_') == Some(name)
}

fn fqdn(text: &str) -> Option<Name> {
    let bare = text.trim_end_matches('.');
    if bare.is_empty() {
        return None;
    }
    let dotted = format!("{bare}.");
    Name::from_ascii(&dotted).or_else(|_| Name::from_utf8(&dotted)).ok()
}

fn service_answer(table: &ServiceTable, zone: &str, name: &str, entry: &ServiceEntry, qtype: RecordType, hops: usize) -> Answer {
    // The owner keeps the case the client asked in, as CoreDNS does.
    let Some(owner) = fqdn(name) else { return Answer::NxDomain };
    if let Some(external) = &entry.external_name {
        let Some(target) = fqdn(external) else { return Answer::NoData };
        let mut records = vec![Record::from_rdata(owner, RECORD_TTL_SECS, RData::CNAME(CNAME(target.clone())))];
        // Stub resolvers (glibc, musl) do not chase a CNAME themselves, so
        // the target's records come along; outside the zone, the server asks
        // upstream for them.
        if !matches!(qtype, RecordType::CNAME | RecordType::ANY) && hops > 0 {
            if let Answer::Records(chased) = answer_within(table, zone, &target.to_ascii(), qtype, hops - 1) {
                records.extend(chased);
            }
        }
        return Answer::Records(records);
    }
    if !matches!(qtype, RecordType::A | RecordType::ANY) {
        return Answer::NoData;
    }
    let ips = match entry.cluster_ip {
        Some(ip) => vec![ip],
        None => entry.ready_ips(),
    };
    if ips.is_empty() {
        return Answer::NoData;
    }
    Answer::Records(ips.into_iter().map(|ip| Record::from_rdata(owner.clone(), RECORD_TTL_SECS, RData::A(A(ip)))).collect())
}

fn srv_answer(zone: &str, name: &str, entry: &ServiceEntry, port_label: &str, proto_label: &str, qtype: RecordType) -> Answer {
    let port =
        entry.ports.iter().find(|p| !p.name.is_empty() && label_is(port_label, &p.name) && label_is(proto_label, p.protocol.lower()));
    let Some(port) = port else { return Answer::NxDomain };
    if !matches!(qtype, RecordType::SRV | RecordType::ANY) {
        return Answer::NoData;
    }
    let target = format!("{}.{}.svc.{zone}", entry.name, entry.namespace);
    let (Some(owner), Some(target)) = (fqdn(name), fqdn(&target)) else { return Answer::NxDomain };
    // Behind a virtual IP clients dial the service port; a headless service
    // has no proxy in between, so they dial the endpoints' own port.
    let mut ports: Vec<u16> = if entry.cluster_ip.is_none() && entry.external_name.is_none() {
        port.backends.iter().map(|b| b.port).collect()
    } else {
        vec![port.port]
    };
    ports.sort_unstable();
    ports.dedup();
    if ports.is_empty() {
        return Answer::NoData;
    }
    let srv =
        |p: u16| Record::from_rdata(owner.clone(), RECORD_TTL_SECS, RData::SRV(SRV::new(SRV_PRIORITY, SRV_WEIGHT, p, target.clone())));
    Answer::Records(ports.into_iter().map(srv).collect())
}

/// The zone's SOA: negative answers carry it so resolvers know how long
/// to cache an absence (as briefly as a record).
fn soa_record(zone: &str) -> Option<Record> {
    let apex = fqdn(zone)?;
    let mname = fqdn(&format!("ns.dns.{zone}"))?;
    let rname = fqdn(&format!("hostmaster.{zone}"))?;
    let soa = SOA::new(mname, rname, 1, 7200, 1800, 86400, RECORD_TTL_SECS);
    Some(Record::from_rdata(apex, RECORD_TTL_SECS, RData::SOA(soa)))
}

/// Why cluster DNS could not start or a relayed query failed.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("invalid cluster DNS zone {0:?}")]
    InvalidZone(String),
    #[error("cannot bind cluster DNS on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("upstream nameserver {upstream}: {source}")]
    Upstream { upstream: SocketAddr, source: io::Error },
    #[error("upstream nameserver {upstream} did not answer within {after:?}")]
    Timeout { upstream: SocketAddr, after: Duration },
    #[error("upstream nameserver {upstream} sent a malformed reply: {reason}")]
    Malformed { upstream: SocketAddr, reason: String },
    #[error("no upstream nameservers are configured")]
    NoUpstreams,
}

/// The table the server answers from, replaced whole on every change so a
/// query never sees half an update.
pub type SharedServiceTable = Arc<RwLock<Arc<ServiceTable>>>;

/// Wraps a table for [`DnsServer::start`].
pub fn share(table: ServiceTable) -> SharedServiceTable {
    Arc::new(RwLock::new(Arc::new(table)))
}

/// What a [`DnsServer`] serves, and where.
#[derive(Clone, Debug)]
pub struct DnsConfig {
    /// UDP and TCP both listen here, on the same port; port 0 picks a free one.
    pub bind: SocketAddr,
    /// The cluster domain, e.g. `cluster.local`.
    pub zone: String,
    /// Nameservers for names outside the zone, tried in order. Empty means
    /// such names are refused.
    pub upstreams: Vec<SocketAddr>,
}

/// The node's cluster DNS server. Dropping it stops serving; [`DnsServer::stop`]
/// does so and waits until the sockets are closed.
pub struct DnsServer {
    local_addr: SocketAddr,
    table: SharedServiceTable,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl DnsServer {
    /// Binds UDP and TCP on `config.bind` and serves `table` until stopped.
    pub async fn start(config: DnsConfig, table: SharedServiceTable) -> Result<DnsServer, DnsError> {
        let zone = canonical(&config.zone);
        if zone.is_empty() || fqdn(&zone).is_none() {
            return Err(DnsError::InvalidZone(config.zone));
        }
        let (udp, tcp, local_addr) = bind_pair(config.bind).await?;
        let handler = ClusterDns {
            zone: zone.clone(),
            table: Arc::clone(&table),
            upstreams: config.upstreams,
            forwards: Arc::new(Semaphore::new(MAX_FORWARDS_IN_FLIGHT)),
        };
        let mut server = Server::new(handler);
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(TCP_IDLE_TIMEOUT_SECS), TCP_RESPONSE_QUEUE_MESSAGES);
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let span = tracing::info_span!("cluster_dns", addr = %local_addr, zone = %zone);
        let task = tokio::spawn(
            async move {
                let ended = tokio::select! {
                    result = server.block_until_done() => Some(result),
                    _ = stop_rx => None,
                };
                let result = match ended {
                    Some(result) => result,
                    None => server.shutdown_gracefully().await,
                };
                if let Err(error) = result {
                    warn!(%error, "cluster DNS stopped with an error");
                }
            }
            .instrument(span),
        );
        debug!(%local_addr, %zone, "cluster DNS listening");
        Ok(DnsServer { local_addr, table, stop: Some(stop_tx), task: Some(task) })
    }

    /// Where UDP and TCP are served.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Replaces the table; the next query is answered from it.
    pub fn update(&self, table: ServiceTable) {
        *self.table.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(table);
    }

    /// The shared table itself, for a feed that replaces it.
    pub fn shared(&self) -> SharedServiceTable {
        Arc::clone(&self.table)
    }

    /// The table being served.
    pub fn table(&self) -> Arc<ServiceTable> {
        Arc::clone(&self.table.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Stops serving and waits until both sockets are closed.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        // Aborting the task drops the hickory Server, whose JoinSet aborts
        // the socket tasks in turn.
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// UDP and TCP on one port, so `local_addr` is the whole story for clients.
async fn bind_pair(addr: SocketAddr) -> Result<(UdpSocket, TcpListener, SocketAddr), DnsError> {
    let mut attempt = 1;
    loop {
        let udp = UdpSocket::bind(addr).await.map_err(|source| DnsError::Bind { addr, source })?;
        let bound = udp.local_addr().map_err(|source| DnsError::Bind { addr, source })?;
        match TcpListener::bind(bound).await {
            Ok(tcp) => return Ok((udp, tcp, bound)),
            // The port the kernel picked for UDP can be taken for TCP: pick again.
            Err(source) if addr.port() == 0 && attempt < BIND_ATTEMPTS => {
                debug!(%bound, error = %source, "TCP port taken, binding again");
                attempt += 1;
            }
            Err(source) => return Err(DnsError::Bind { addr: bound, source }),
        }
    }
}

/// The host's nameservers from /etc/resolv.conf, less this server's own
/// address `own`: relaying to ourselves would loop until the deadline.
pub fn host_upstreams(own: SocketAddr) -> Vec<SocketAddr> {
    match std::fs::read_to_string(RESOLV_CONF_PATH) {
        Ok(text) => parse_resolv_conf(&text, own),
        Err(error) => {
            warn!(%error, path = RESOLV_CONF_PATH, "no host nameservers: names outside the cluster will be refused");
            Vec::new()
        }
    }
}

/// The `nameserver` lines of a resolv.conf, in order and once each, less `own`.
pub fn parse_resolv_conf(text: &str, own: SocketAddr) -> Vec<SocketAddr> {
    let mut upstreams = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(ip) = words.next().and_then(|w| w.parse::<IpAddr>().ok()) else { continue };
        let addr = SocketAddr::new(ip, DNS_PORT);
        // Bound to the wildcard, every local address reaches us; loopback
        // ones are the ones a resolv.conf names.
        let is_us = addr.port() == own.port() && (ip == own.ip() || (own.ip().is_unspecified() && ip.is_loopback()));
        if !is_us && !upstreams.contains(&addr) {
            upstreams.push(addr);
        }
    }
    upstreams
}

/// hickory's request handler: the table for the zone, upstream for the rest.
struct ClusterDns {
    zone: String,
    table: SharedServiceTable,
    upstreams: Vec<SocketAddr>,
    forwards: Arc<Semaphore>,
}

#[async_trait::async_trait]
impl RequestHandler for ClusterDns {
    async fn handle_request<R: ResponseHandler, T: Time>(&self, request: &Request, response_handle: R) -> ResponseInfo {
        let query = request.queries.queries().first();
        let name = query.map(|q| q.original().name().to_ascii()).unwrap_or_default();
        let qtype = query.map(|q| q.query_type().to_string()).unwrap_or_default();
        let span = tracing::debug_span!("dns_query", %name, %qtype, src = %request.src());
        self.respond(request, response_handle).instrument(span).await
    }
}

impl ClusterDns {
    fn snapshot(&self) -> Arc<ServiceTable> {
        Arc::clone(&self.table.read().unwrap_or_else(PoisonError::into_inner))
    }

    async fn respond<R: ResponseHandler>(&self, request: &Request, mut handle: R) -> ResponseInfo {
        let edns = response_edns(request);
        if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
            return send_error(request, &mut handle, ResponseCode::BADVERS, edns.as_ref()).await;
        }
        if request.metadata.op_code != OpCode::Query {
            return send_error(request, &mut handle, ResponseCode::NotImp, edns.as_ref()).await;
        }
        let [query] = request.queries.queries() else {
            return send_error(request, &mut handle, ResponseCode::FormErr, edns.as_ref()).await;
        };
        let qtype = query.query_type();
        let decided = answer_within(&self.snapshot(), &self.zone, &query.original().name().to_ascii(), qtype, MAX_CNAME_HOPS);
        if decided != Answer::Forward && query.query_class() != DNSClass::IN {
            return send_error(request, &mut handle, ResponseCode::Refused, edns.as_ref()).await;
        }
        match decided {
            Answer::Records(mut records) => {
                let mut code = ResponseCode::NoError;
                let mut authoritative = true;
                if let Some(target) = self.outside_target(&records, qtype) {
                    if let Some((upstream_code, chased)) = self.resolve_upstream(target, qtype).await {
                        code = upstream_code;
                        authoritative = false;
                        records.extend(chased);
                    }
                }
                debug!(answers = records.len(), %code, "answered from the service table");
                let mut metadata = zone_metadata(request, code);
                metadata.authoritative = authoritative;
                send(request, &mut handle, metadata, edns.as_ref(), &records, &[], &[]).await
            }
            Answer::NoData => self.negative(request, &mut handle, ResponseCode::NoError, edns.as_ref()).await,
            Answer::NxDomain => self.negative(request, &mut handle, ResponseCode::NXDomain, edns.as_ref()).await,
            Answer::Forward => self.forward(request, &mut handle, edns.as_ref()).await,
        }
    }

    async fn negative<R: ResponseHandler>(
        &self,
        request: &Request,
        handle: &mut R,
        code: ResponseCode,
        edns: Option<&Edns>,
    ) -> ResponseInfo {
        debug!(%code, "no records in the service table");
        let soa: Vec<Record> = soa_record(&self.zone).into_iter().collect();
        send(request, handle, zone_metadata(request, code), edns, &[], &soa, &[]).await
    }

    /// The target of a final CNAME pointing out of the zone, which only
    /// upstream can resolve further.
    fn outside_target(&self, records: &[Record], qtype: RecordType) -> Option<Name> {
        if matches!(qtype, RecordType::CNAME | RecordType::ANY) || self.upstreams.is_empty() {
            return None;
        }
        let RData::CNAME(CNAME(target)) = &records.last()?.data else { return None };
        labels_under(&self.zone, &canonical(&target.to_ascii())).is_none().then(|| target.clone())
    }

    /// Asks upstream for `target`; None leaves the client the bare CNAME.
    async fn resolve_upstream(&self, target: Name, qtype: RecordType) -> Option<(ResponseCode, Vec<Record>)> {
        let _permit = self.forwards.try_acquire().ok()?;
        let mut query = Message::query();
        query.add_query(Query::query(target, qtype));
        query.metadata.recursion_desired = true;
        let bytes = query.to_vec().ok()?;
        match exchange(&self.upstreams, &bytes, query.metadata.id, true).await {
            Ok(reply) if matches!(reply.metadata.response_code, ResponseCode::NoError | ResponseCode::NXDomain) => {
                Some((reply.metadata.response_code, reply.answers))
            }
            Ok(reply) => {
                debug!(code = %reply.metadata.response_code, "upstream could not resolve the CNAME target");
                None
            }
            Err(error) => {
                debug!(%error, "upstream could not resolve the CNAME target");
                None
            }
        }
    }

    async fn forward<R: ResponseHandler>(&self, request: &Request, handle: &mut R, edns: Option<&Edns>) -> ResponseInfo {
        if self.upstreams.is_empty() {
            debug!("outside the zone and no upstream nameservers: refused");
            return send_error(request, handle, ResponseCode::Refused, edns).await;
        }
        let Ok(_permit) = self.forwards.try_acquire() else {
            warn!(limit = MAX_FORWARDS_IN_FLIGHT, "too many relayed queries in flight: SERVFAIL");
            return send_error(request, handle, ResponseCode::ServFail, edns).await;
        };
        // A client that came over TCP was told the answer is large: fetch
        // it whole rather than hand back another truncated one.
        let tcp_when_truncated = request.protocol().is_stream();
        match exchange(&self.upstreams, request.as_slice(), request.metadata.id, tcp_when_truncated).await {
            Ok(reply) => {
                let mut metadata = reply.metadata;
                metadata.id = request.metadata.id;
                metadata.message_type = MessageType::Response;
                debug!(code = %metadata.response_code, answers = reply.answers.len(), "relayed");
                // Re-encoded rather than copied byte for byte, so the reply is
                // truncated to what this client accepts, not what we asked for.
                send(request, handle, metadata, edns, &reply.answers, &reply.authorities, &reply.additionals).await
            }
            Err(error) => {
                debug!(%error, "no upstream answered: SERVFAIL");
                send_error(request, handle, ResponseCode::ServFail, edns).await
            }
        }
    }
}

/// Our EDNS in reply to the client's: it carries the client's payload
/// size, which bounds the UDP response hickory encodes.
fn response_edns(request: &Request) -> Option<Edns> {
    request.edns.as_ref().map(|asked| {
        let mut edns = Edns::new();
        edns.set_max_payload(asked.max_payload());
        edns.set_version(0);
        edns
    })
}

fn zone_metadata(request: &Request, code: ResponseCode) -> Metadata {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.authoritative = true;
    // Pods use this server as their only resolver, and it does recurse
    // (through the upstreams) for names outside the zone.
    metadata.recursion_available = true;
    metadata.response_code = code;
    metadata
}

fn serve_failed(request: &Request) -> ResponseInfo {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.response_code = ResponseCode::ServFail;
    ResponseInfo::from(Header { metadata, counts: HeaderCounts::default() })
}

async fn send<R: ResponseHandler>(
    request: &Request,
    handle: &mut R,
    metadata: Metadata,
    edns: Option<&Edns>,
    answers: &[Record],
    authorities: &[Record],
    additionals: &[Record],
) -> ResponseInfo {
    let response = MessageResponseBuilder::new(&request.queries, edns).build(metadata, answers, authorities, [], additionals);
    match handle.send_response(response).await {
        Ok(info) => info,
        Err(error) => {
            warn!(%error, "cannot send DNS response");
            serve_failed(request)
        }
    }
}

async fn send_error<R: ResponseHandler>(request: &Request, handle: &mut R, code: ResponseCode, edns: Option<&Edns>) -> ResponseInfo {
    let response = MessageResponseBuilder::new(&request.queries, edns).error_msg(&request.metadata, code);
    match handle.send_response(response).await {
        Ok(info) => info,
        Err(error) => {
            warn!(%error, "cannot send DNS error response");
            serve_failed(request)
        }
    }
}

/// Asks the upstreams in order; the first real answer wins. A SERVFAIL or
/// REFUSED is kept only in case no other upstream does better.
async fn exchange(upstreams: &[SocketAddr], query: &[u8], id: u16, tcp_when_truncated: bool) -> Result<Message, DnsError> {
    let mut declined = None;
    let mut last_error = DnsError::NoUpstreams;
    for &upstream in upstreams {
        match exchange_one(upstream, query, id, tcp_when_truncated).await {
            Ok(reply) if matches!(reply.metadata.response_code, ResponseCode::ServFail | ResponseCode::Refused) => {
                debug!(%upstream, code = %reply.metadata.response_code, "upstream declined");
                if declined.is_none() {
                    declined = Some(reply);
                }
            }
            Ok(reply) => return Ok(reply),
            Err(error) => {
                debug!(%error, "upstream failed");
                last_error = error;
            }
        }
    }
    declined.ok_or(last_error)
}

async fn exchange_one(upstream: SocketAddr, query: &[u8], id: u16, tcp_when_truncated: bool) -> Result<Message, DnsError> {
    let after = Duration::from_secs(UPSTREAM_TIMEOUT_SECS);
    let attempt = async {
        let reply = udp_exchange(upstream, query, id).await?;
        if reply.metadata.truncation && tcp_when_truncated {
            return tcp_exchange(upstream, query, id).await;
        }
        Ok::<Message, DnsError>(reply)
    };
    tokio::time::timeout(after, attempt).await.map_err(|_| DnsError::Timeout { upstream, after })?
}

async fn udp_exchange(upstream: SocketAddr, query: &[u8], id: u16) -> Result<Message, DnsError> {
    let failed = move |source: io::Error| DnsError::Upstream { upstream, source };
    let local =
        if upstream.is_ipv4() { SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)) } else { SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)) };
    // A socket of its own per query: a fresh random port, and the kernel
    // drops datagrams from anyone but the upstream (connect).
    let socket = UdpSocket::bind(local).await.map_err(failed)?;
    socket.connect(upstream).await.map_err(failed)?;
    socket.send(query).await.map_err(failed)?;
    let mut buf = vec![0; MAX_MESSAGE_BYTES];
    loop {
        let len = socket.recv(&mut buf).await.map_err(failed)?;
        if let Some(reply) = decode_reply(upstream, &buf[..len], id)? {
            return Ok(reply);
        }
    }
}

async fn tcp_exchange(upstream: SocketAddr, query: &[u8], id: u16) -> Result<Message, DnsError> {
    let failed = move |source: io::Error| DnsError::Upstream { upstream, source };
    let len = u16::try_from(query.len()).map_err(|_| DnsError::Malformed { upstream, reason: "query too long for TCP".into() })?;
    let mut stream = TcpStream::connect(upstream).await.map_err(failed)?;
    let mut framed = Vec::with_capacity(query.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(query);
    stream.write_all(&framed).await.map_err(failed)?;
    let mut prefix = [0u8; 2];
    stream.read_exact(&mut prefix).await.map_err(failed)?;
    let mut reply = vec![0; usize::from(u16::from_be_bytes(prefix))];
    stream.read_exact(&mut reply).await.map_err(failed)?;
    decode_reply(upstream, &reply, id)?.ok_or_else(|| DnsError::Malformed { upstream, reason: "reply to another query".into() })
}

/// The reply to query `id`, or None for a datagram that is not one (a late
/// answer to an earlier query, or noise), judged on the raw header.
fn decode_reply(upstream: SocketAddr, bytes: &[u8], id: u16) -> Result<Option<Message>, DnsError> {
    let is_response = bytes.len() >= 12 && bytes[2] & 0x80 != 0;
    if !is_response || u16::from_be_bytes([bytes[0], bytes[1]]) != id {
        return Ok(None);
    }
    Message::from_vec(bytes).map(Some).map_err(|error| DnsError::Malformed { upstream, reason: error.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::service_table::{Backend, Protocol, ServicePortEntry};

    const ZONE: &str = "cluster.local";

    fn port(name: &str, protocol: Protocol, port: u16, backends: &[(Ipv4Addr, u16)]) -> ServicePortEntry {
        ServicePortEntry {
            name: name.into(),
            protocol,
            port,
            node_port: None,
            backends: backends.iter().map(|&(ip, port)| Backend { ip, port, pod: None }).collect(),
        }
    }

    fn service(
        ns: &str,
        name: &str,
        cluster_ip: Option<Ipv4Addr>,
        external_name: Option<&str>,
        ports: Vec<ServicePortEntry>,
    ) -> ServiceEntry {
        ServiceEntry { namespace: ns.into(), name: name.into(), cluster_ip, external_name: external_name.map(Into::into), ports }
    }

    fn table() -> ServiceTable {
        let ip = Ipv4Addr::new;
        let entries = vec![
            service(
                "default",
                "web",
                Some(ip(10, 96, 0, 10)),
                None,
                vec![
                    port("http", Protocol::Tcp, 80, &[(ip(10, 244, 1, 2), 8080), (ip(10, 244, 2, 3), 8080)]),
                    port("dns", Protocol::Udp, 53, &[]),
                ],
            ),
            service(
                "default",
                "db",
                None,
                None,
                vec![port("pg", Protocol::Tcp, 5432, &[(ip(10, 244, 2, 9), 6432), (ip(10, 244, 1, 7), 6432)])],
            ),
            service("default", "empty", None, None, vec![port("", Protocol::Tcp, 80, &[])]),
            service("default", "ext", None, Some("example.org"), vec![]),
            service("default", "alias", None, Some("web.default.svc.cluster.local"), vec![]),
            service("default", "loop-a", None, Some("loop-b.default.svc.cluster.local"), vec![]),
            service("default", "loop-b", None, Some("loop-a.default.svc.cluster.local"), vec![]),
            service("prod", "api", Some(ip(10, 96, 5, 5)), None, vec![port("", Protocol::Tcp, 443, &[])]),
        ];
        ServiceTable { services: entries.into_iter().map(|e| ((e.namespace.clone(), e.name.clone()), e)).collect() }
    }

    fn rendered(records: &[Record]) -> Vec<String> {
        records.iter().map(ToString::to_string).collect()
    }

    fn records(answer: Answer) -> Vec<String> {
        match answer {
            Answer::Records(records) => rendered(&records),
            other => panic!("expected records, got {other:?}"),
        }
    }

    #[test]
    fn a_service_name_resolves_to_its_virtual_ip() {
        let t = table();
        assert_eq!(
            records(answer(&t, ZONE, "web.default.svc.cluster.local", RecordType::A)),
            vec!["web.default.svc.cluster.local. 5 IN A 10.96.0.10"]
        );
        assert_eq!(
            records(answer(&t, ZONE, "api.prod.svc.cluster.local.", RecordType::A)),
            vec!["api.prod.svc.cluster.local. 5 IN A 10.96.5.5"]
        );
    }

    #[test]
    fn names_match_in_any_case_and_keep_the_case_asked() {
        let t = table();
        assert_eq!(
            records(answer(&t, "Cluster.Local.", "WEB.Default.SVC.cluster.LOCAL.", RecordType::A)),
            vec!["WEB.Default.SVC.cluster.LOCAL. 5 IN A 10.96.0.10"]
        );
    }

    #[test]
    fn a_headless_service_resolves_to_its_ready_endpoints() {
        let t = table();
        assert_eq!(
            records(answer(&t, ZONE, "db.default.svc.cluster.local", RecordType::A)),
            vec!["db.default.svc.cluster.local. 5 IN A 10.244.1.7", "db.default.svc.cluster.local. 5 IN A 10.244.2.9"]
        );
        assert_eq!(answer(&t, ZONE, "empty.default.svc.cluster.local", RecordType::A), Answer::NoData);
    }

    #[test]
    fn an_external_name_service_is_a_cname() {
        let t = table();
        let cname = vec!["ext.default.svc.cluster.local. 5 IN CNAME example.org."];
        assert_eq!(records(answer(&t, ZONE, "ext.default.svc.cluster.local", RecordType::A)), cname);
        assert_eq!(records(answer(&t, ZONE, "ext.default.svc.cluster.local", RecordType::CNAME)), cname);
        assert_eq!(records(answer(&t, ZONE, "ext.default.svc.cluster.local", RecordType::AAAA)), cname);
        // A target inside the zone is answered along with the CNAME.
        assert_eq!(
            records(answer(&t, ZONE, "alias.default.svc.cluster.local", RecordType::A)),
            vec![
                "alias.default.svc.cluster.local. 5 IN CNAME web.default.svc.cluster.local.",
                "web.default.svc.cluster.local. 5 IN A 10.96.0.10"
            ]
        );
        // Services naming each other end after a bounded number of hops.
        match answer(&t, ZONE, "loop-a.default.svc.cluster.local", RecordType::A) {
            Answer::Records(r) => assert_eq!(r.len(), MAX_CNAME_HOPS + 1),
            other => panic!("expected records, got {other:?}"),
        }
    }

    #[test]
    fn named_ports_have_srv_records() {
        let t = table();
        assert_eq!(
            records(answer(&t, ZONE, "_http._tcp.web.default.svc.cluster.local", RecordType::SRV)),
            vec!["_http._tcp.web.default.svc.cluster.local. 5 IN SRV 0 100 80 web.default.svc.cluster.local."]
        );
        assert_eq!(
            records(answer(&t, ZONE, "_dns._udp.web.default.svc.cluster.local.", RecordType::SRV)),
            vec!["_dns._udp.web.default.svc.cluster.local. 5 IN SRV 0 100 53 web.default.svc.cluster.local."]
        );
        // Headless: the endpoints' port, since nothing translates the service port.
        assert_eq!(
            records(answer(&t, ZONE, "_pg._tcp.db.default.svc.cluster.local", RecordType::SRV)),
            vec!["_pg._tcp.db.default.svc.cluster.local. 5 IN SRV 0 100 6432 db.default.svc.cluster.local."]
        );
        assert_eq!(answer(&t, ZONE, "_http._tcp.web.default.svc.cluster.local", RecordType::A), Answer::NoData);
        assert_eq!(answer(&t, ZONE, "_tcp.web.default.svc.cluster.local", RecordType::SRV), Answer::NoData);
        assert_eq!(answer(&t, ZONE, "_http._udp.web.default.svc.cluster.local", RecordType::SRV), Answer::NxDomain);
        assert_eq!(answer(&t, ZONE, "_https._tcp.web.default.svc.cluster.local", RecordType::SRV), Answer::NxDomain);
        assert_eq!(answer(&t, ZONE, "_udp.web.default.svc.cluster.local", RecordType::SRV), Answer::NoData);
        assert_eq!(answer(&t, ZONE, "_tcp.api.prod.svc.cluster.local", RecordType::SRV), Answer::NxDomain);
    }

    #[test]
    fn other_types_of_an_existing_name_are_nodata() {
        let t = table();
        assert_eq!(answer(&t, ZONE, "web.default.svc.cluster.local", RecordType::AAAA), Answer::NoData);
        assert_eq!(answer(&t, ZONE, "web.default.svc.cluster.local", RecordType::TXT), Answer::NoData);
        assert_eq!(answer(&t, ZONE, "web.default.svc.cluster.local", RecordType::SRV), Answer::NoData);
    }

    #[test]
    fn names_in_the_zone_that_do_not_exist_are_nxdomain() {
        let t = table();
        for name in [
            "nope.default.svc.cluster.local",
            "web.nope.svc.cluster.local",
            "nope.svc.cluster.local",
            "web.default.svc.cluster.local.default.svc.cluster.local",
            "web.default.svc.cluster.local.svc.cluster.local",
            "web.default.pod.cluster.local",
            "pod-0.db.default.svc.cluster.local",
            "x._http._tcp.web.default.svc.cluster.local",
        ] {
            assert_eq!(answer(&t, ZONE, name, RecordType::A), Answer::NxDomain, "{name}");
        }
        // Interior nodes exist.
        assert_eq!(answer(&t, ZONE, "default.svc.cluster.local", RecordType::A), Answer::NoData);
        assert_eq!(answer(&t, ZONE, "svc.cluster.local", RecordType::A), Answer::NoData);
        assert_eq!(answer(&t, ZONE, "cluster.local.", RecordType::A), Answer::NoData);
        assert_eq!(
            records(answer(&t, ZONE, "cluster.local", RecordType::SOA)),
            vec!["cluster.local. 5 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 5"]
        );
    }

    #[test]
    fn names_outside_the_zone_are_forwarded() {
        let t = table();
        for name in ["example.org", "example.org.", "notcluster.local", "local", ".", "web.default.svc.cluster.local.example.org"] {
            assert_eq!(answer(&t, ZONE, name, RecordType::A), Answer::Forward, "{name}");
        }
    }

    #[test]
    fn resolv_conf_nameservers_less_our_own_address() {
        let text = "# generated\nsearch example.org\nnameserver 192.0.2.1\nnameserver 127.0.0.53 # stub\n;nameserver 192.0.2.9\n\
                    nameserver 192.0.2.1\nnameserver fe80::1%eth0\nnameserver 2001:db8::1\noptions edns0\n";
        let addrs = |list: &[&str]| list.iter().map(|a| a.parse::<SocketAddr>().unwrap()).collect::<Vec<_>>();
        let wildcard: SocketAddr = "0.0.0.0:53".parse().unwrap();
        assert_eq!(parse_resolv_conf(text, wildcard), addrs(&["192.0.2.1:53", "[2001:db8::1]:53"]));
        let elsewhere: SocketAddr = "10.96.0.10:53".parse().unwrap();
        assert_eq!(parse_resolv_conf(text, elsewhere), addrs(&["192.0.2.1:53", "127.0.0.53:53", "[2001:db8::1]:53"]));
        let other_port: SocketAddr = "127.0.0.53:5353".parse().unwrap();
        assert_eq!(parse_resolv_conf(text, other_port).len(), 3);
    }

    fn query_bytes(name: &str, qtype: RecordType) -> (Vec<u8>, u16) {
        let mut query = Message::query();
        query.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        query.metadata.recursion_desired = true;
        (query.to_vec().unwrap(), query.metadata.id)
    }

    async fn query_udp(server: SocketAddr, name: &str, qtype: RecordType) -> Message {
        let (bytes, id) = query_bytes(name, qtype);
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket.send_to(&bytes, server).await.unwrap();
        let mut buf = vec![0u8; MAX_MESSAGE_BYTES];
        let (len, _) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buf)).await.expect("a reply in time").unwrap();
        let reply = Message::from_vec(&buf[..len]).unwrap();
        assert_eq!(reply.metadata.id, id);
        assert_eq!(reply.metadata.message_type, MessageType::Response);
        reply
    }

    fn config(upstreams: Vec<SocketAddr>) -> DnsConfig {
        DnsConfig { bind: "127.0.0.1:0".parse().unwrap(), zone: ZONE.into(), upstreams }
    }

    /// An address nothing listens on: the kernel refuses at once.
    async fn dead_upstream() -> SocketAddr {
        UdpSocket::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap()
    }

    #[tokio::test]
    async fn serves_the_table_over_udp_and_tcp() {
        let server = DnsServer::start(config(vec![]), share(table())).await.unwrap();
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0);

        let reply = query_udp(addr, "web.default.svc.cluster.local.", RecordType::A).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert!(reply.metadata.authoritative);
        assert_eq!(rendered(&reply.answers), vec!["web.default.svc.cluster.local. 5 IN A 10.96.0.10"]);

        let reply = query_udp(addr, "nope.default.svc.cluster.local.", RecordType::A).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
        assert!(reply.answers.is_empty());
        assert_eq!(
            rendered(&reply.authorities),
            vec!["cluster.local. 5 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 5"]
        );

        let reply = query_udp(addr, "web.default.svc.cluster.local.", RecordType::AAAA).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert!(reply.answers.is_empty());

        // Without upstreams, names outside the zone are refused.
        let reply = query_udp(addr, "example.org.", RecordType::A).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::Refused);

        // The next query sees a replaced table.
        let mut changed = table();
        changed.services.get_mut(&("default".to_string(), "web".to_string())).unwrap().cluster_ip = Some(Ipv4Addr::new(10, 96, 0, 99));
        server.update(changed);
        let reply = query_udp(addr, "web.default.svc.cluster.local.", RecordType::A).await;
        assert_eq!(rendered(&reply.answers), vec!["web.default.svc.cluster.local. 5 IN A 10.96.0.99"]);

        let (bytes, id) = query_bytes("_http._tcp.web.default.svc.cluster.local.", RecordType::SRV);
        let reply = tcp_exchange(addr, &bytes, id).await.unwrap();
        assert_eq!(
            rendered(&reply.answers),
            vec!["_http._tcp.web.default.svc.cluster.local. 5 IN SRV 0 100 80 web.default.svc.cluster.local."]
        );

        server.stop().await;
        // Stopped means the port is free again.
        UdpSocket::bind(addr).await.unwrap();
    }

    /// A nameserver that answers every A query with 192.0.2.7.
    async fn fake_upstream() -> (SocketAddr, JoinHandle<()>) {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; MAX_MESSAGE_BYTES];
            while let Ok((len, from)) = socket.recv_from(&mut buf).await {
                let Ok(query) = Message::from_vec(&buf[..len]) else { continue };
                let mut reply = Message::response(query.metadata.id, OpCode::Query);
                reply.metadata.recursion_desired = query.metadata.recursion_desired;
                reply.metadata.recursion_available = true;
                reply.add_queries(query.queries.clone());
                if let Some(q) = query.queries.first() {
                    if q.query_type() == RecordType::A {
                        reply.add_answer(Record::from_rdata(q.name().clone(), 60, RData::A(A::new(192, 0, 2, 7))));
                    }
                }
                let _ = socket.send_to(&reply.to_vec().unwrap(), from).await;
            }
        });
        (addr, task)
    }

    #[tokio::test]
    async fn forwards_names_outside_the_zone() {
        let (upstream, fake) = fake_upstream().await;
        // The first upstream is down: the second one answers.
        let server = DnsServer::start(config(vec![dead_upstream().await, upstream]), share(table())).await.unwrap();
        let addr = server.local_addr();

        let reply = query_udp(addr, "example.org.", RecordType::A).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert!(reply.metadata.recursion_available);
        assert_eq!(rendered(&reply.answers), vec!["example.org. 60 IN A 192.0.2.7"]);

        // An ExternalName's target outside the zone is resolved upstream.
        let reply = query_udp(addr, "ext.default.svc.cluster.local.", RecordType::A).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert_eq!(
            rendered(&reply.answers),
            vec!["ext.default.svc.cluster.local. 5 IN CNAME example.org.", "example.org. 60 IN A 192.0.2.7"]
        );

        server.stop().await;
        fake.abort();
    }

    #[tokio::test]
    async fn servfail_when_no_upstream_answers() {
        let server = DnsServer::start(config(vec![dead_upstream().await]), share(table())).await.unwrap();
        let reply = query_udp(server.local_addr(), "example.org.", RecordType::A).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
        // The zone is still answered.
        let reply = query_udp(server.local_addr(), "web.default.svc.cluster.local.", RecordType::A).await;
        assert_eq!(rendered(&reply.answers), vec!["web.default.svc.cluster.local. 5 IN A 10.96.0.10"]);
    }

    #[tokio::test]
    async fn rejects_an_empty_zone() {
        let root = DnsConfig { zone: ".".into(), ..config(vec![]) };
        assert!(matches!(DnsServer::start(root, share(table())).await, Err(DnsError::InvalidZone(_))));
    }
}
