// Package server runs turnd, the chatmail TURN server: pion/turn v4 on
// UDP and TCP, with turnd's credential checks, peer policy, quotas,
// bandwidth shaping, revocation and metrics around it.
//
// # Credentials
//
// Clients use the credentials metadata-proxy issues (sidecar/turncred):
// username = the decimal expiry, password = base64(HMAC-SHA1(secret,
// username)), realm = [turn] realm. pion's AuthHandler (on every
// authenticated request: Allocate, Refresh, CreatePermission, ChannelBind)
// checks the realm, the username's form and the expiry, and returns the
// long-term key; pion then checks the message integrity with it (a forged
// password fails there, with 400). Only an Allocate whose integrity pion
// verified reaches the QuotaHandler: first the source's rate and quota
// (cheap, before any query), then the store is asked which account the
// credential was issued to, if it exists and is not blocked (so a forged
// request never costs a query), then the account's and the server's
// quotas. The store's answer, the account or "not usable", is cached for
// 30 s while account changes are heard; any change drops the whole cache
// (a notification names an address, not a credential), and nothing is
// cached while changes are not heard. The account's address is kept in
// memory only, never logged or used as a label. A store error, or a
// schema not yet migrated, refuses the allocation (486): TURN has no "try
// again later", and turnd never allows on an error. Refused requests are
// counted by reason, never logged with an identity but through the
// masking attributes.
//
// # When PostgreSQL is slow or down
//
// pion calls the QuotaHandler in the read loop of the socket the Allocate
// came in on: while a query runs, nothing else on that UDP socket (one of
// udp_sockets per address) is read, relayed ChannelData included (a TCP
// connection has a read loop of its own). So a query has store_timeout
// (250 ms), and after a failed or timed-out one the store is not asked for
// store_backoff (5 s): uncached Allocates are refused at once (reason
// store, lookups{source="backoff"}); then one lookup at a time tries the
// store again, the others still refused, until one succeeds. While
// PostgreSQL hangs, a socket's traffic therefore stalls for at most
// store_timeout per store_backoff (5%), once per socket when the outage
// starts. Allocations whose answer is cached (30 s) are served, live
// allocations go on (see below), and new ones are refused until the
// store answers again.
//
// # How a blocked account's allocation ends
//
// pion re-authenticates Refresh, CreatePermission and ChannelBind with the
// AuthHandler alone; a refusal there does not end the allocation: it lives
// until its lifetime runs out (pion: up to just under an hour, as the
// client asks; 10 minutes by default), and existing permissions and
// channels keep relaying meanwhile (TestExpiredCredentialAllocationEnds
// measures this). turnd therefore ends allocations itself, by closing the
// relay socket (pion's relay read loop then deletes the allocation): at
// every account change the store announces (block, delete), and every
// recheck_interval, turnd asks the store about the credential of every
// live allocation and ends those whose credential expired or became
// unusable (TestBlockedAccountAllocationEnds). A store error leaves them
// be until the next check (so does the backoff): a PostgreSQL outage
// does not cut calls in progress. An Allocate whose lookup read the store
// just before a block committed is admitted, and the block's check may
// run before the allocation exists: an allocation made after any account
// change since its lookup began is checked again at once
// (TestBlockDuringLookup). So a blocked account's relaying ends when the
// block commits, or within recheck_interval (1 minute) if the
// notification was missed.
//
// # Peers
//
// Relays are IPv4 sockets (pion allocates "udp4"). A peer is refused, in
// CreatePermission and ChannelBind (both go through pion's
// PermissionHandler), when it is loopback, "this network" (0/8), private,
// CGNAT (100.64/10), link-local, documentation, benchmarking, multicast,
// reserved or broadcast, or any address of this host (every interface's,
// its subnets' broadcast, and relay_address, which behind NAT is not on an
// interface; so neither the TURN port nor other relays can be reached), or
// IPv6 other than IPv4-mapped (unreachable from an IPv4 relay, and NAT64 or
// 6to4 forms could name inside addresses); IPv4-mapped addresses are
// judged as the IPv4 address they map. allow_peers overrides all of it.
// Every datagram a relay sends is checked again (cheaply: the last peer
// found allowed is remembered).
//
// # Limits
//
// An Allocate gets 486 over any of: allocation_rate_per_ip (a token
// bucket per source: 60 a minute, bursts of 20; counted before the store
// is asked), max_allocations_per_ip (20), max_allocations_per_account
// (10, the account's credentials together: it may hold two, the old and
// the one reissued after half its lifetime) and max_allocations (1000).
// A source is its IPv4 address, or the /64 of its IPv6 address. The
// quota handler reserves the admitted Allocate's place in the account's
// and the source's counts, which the allocation takes over or its failure
// (pion's OnAllocationError, in the same goroutine) gives back, so these
// quotas are exact; max_allocations is also the exact bound on open relay
// sockets. A reservation is the pair's of client and server address, as
// pion's allocation is (one client address may reach several listen
// addresses at once; pion tells the quota handler the client only, so
// turnd finds the server address by the address value its socket's read
// gave pion); an allocation without one is ended at once, never counted
// under no account.
//
// max_permissions_per_allocation (64) bounds the peer addresses one
// allocation has a permission for (a CreatePermission carries up to ~120
// of them), max_channels_per_allocation (64) its channels (pion scans
// them linearly per datagram). Both are refused in pion's permission
// handler, which CreatePermission and ChannelBind share, and counted
// (permissions_refused_total{reason}); the handler judges the counts
// pion's permission and channel events keep. pion calls the handler, then
// creates and reports the permission or channel, in the goroutine serving
// the allocation's client, so the counts are exact. The handler cannot
// tell a ChannelBind from a CreatePermission: an allocation at
// max_channels_per_allocation gets neither, refreshes included, until
// some channels expire; at max_permissions_per_allocation the peers it
// has still refresh. A call needs a handful of each. An account thus
// holds at most 10 × 64 permissions (a few hundred kB of pion's state);
// there is no separate total.
//
// max_bandwidth_per_allocation is a token bucket per allocation and
// direction holding one second's worth: datagrams over it are dropped.
// Datagrams to a relay from an address without a permission are dropped
// before they use any of it.
//
// TCP connections are bounded by max_tcp_connections (1000, over all TCP
// listeners, apart from the allocations) and max_tcp_connections_per_ip
// (16); over them a new one is closed at once. A connection without an
// allocation is closed 30 s after its accept (or after its allocation
// ended), however busy it is: Binding requests do not hold a slot. Until
// then its first complete STUN message must arrive within 5 s of the
// accept (a first message that is not STUN closes it), and every later
// message within 5 s of its first byte (a slow dribble does not extend
// either). With an allocation it is closed after 12 minutes without a
// byte. turnd follows the stream's messages as pion's framing
// (turn.STUNConn) cuts them, and closes a connection sending a message
// that is neither STUN nor ChannelData or whose size overflows pion's 16
// bits: a size that wraps to 0 has pion's read loop spin on its buffer
// forever, holding a CPU and the slot (FuzzTCPFraming checks the two
// framings agree). What remains: a client that reconnects every 30 s
// still holds a slot, bounded by max_tcp_connections_per_ip per address.
//
// # Reflection
//
// A 20-byte Allocate without credentials gets a 401 of about 72 bytes
// (×3.6), a Binding request twice its size, and pion's nonce is not bound
// to the client's address: a spoofed source could have turnd reflect more
// at its owner than the spoofer sends. The UDP sockets therefore limit
// their responses to sources without an allocation
// (responses_dropped_total counts those dropped): n =
// unauthenticated_responses_per_prefix (100) a second, bursts as many, to
// one /24 (IPv6: /64), and in front of that n/4 a second to one address
// (IPv4 /32, IPv6 /128), of them n/10 answers to Binding requests (twice
// a 401's size). A spoofer flooding as one address empties that
// address's buckets only (its owner is not answered meanwhile: turnd
// cannot tell them apart), not its network's. Relayed data and answers to
// clients with an allocation are not limited. What remains, accepted: the
// factor within those rates (at one address at most n/4 responses a
// second, at one network n); a spoofer using 4 or more addresses of a /24
// (10 with Binding requests only) still empties the /24's budget, denying
// TURN to its hosts without an allocation while it lasts; and an IPv6
// spoofer within one /64 has as many addresses as it likes.
//
// # Behind NAT
//
// relay_bind is where relay sockets are bound, relay_address what
// allocations announce (XOR-RELAYED-ADDRESS), so a server behind NAT
// announces its public address.
//
// # Logging
//
// pion's logger names addresses and usernames in its text and speaks per
// packet at Debug and Info: those levels are dropped; its warnings and
// errors pass at our Debug level, masked: address shapes, and any run of
// 8 or more hex digits (pion formats some peers with %x, the hex of their
// text).
package server
