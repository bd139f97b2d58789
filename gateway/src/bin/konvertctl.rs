//! `konvertctl`: the operator and integrator command line of Konvert.
//! Argument handling only; the work is in `konvert_gateway`.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use konvert_envelope::envelope::Limits;
use konvert_envelope::model::{AuthorityId, Id, Timestamp};
use konvert_gateway::api::types::{Cursor, Direction, ReceiptState};
use konvert_gateway::client::{self, Client, ClientError, InboxQuery, ReceiptQuery};
use konvert_gateway::offline;
use konvert_gateway::signatories;

/// Konvert: secure message gateway for migration data exchanged under bilateral agreements.
#[derive(Debug, Parser)]
#[command(
    name = "konvertctl",
    version,
    about = "Konvert: secure message gateway for migration data exchanged under bilateral agreements",
    propagate_version = true,
    after_help = "Examples:\n  konvertctl demo                                   # see three gateways exchange messages\n  \
        konvertctl keygen --authority kz.mvd --dir kz/    # keys and card for a gateway\n  \
        konvertctl envelope seal --help                   # seal a message into an envelope\n  \
        konvertctl --socket kz/api.sock send msg.json     # hand a message to a running konvertd\n\n\
        Exit status:\n  \
        0  success\n  \
        1  the command failed; one line on stderr says why (health: konvertd is unavailable;\n     \
        receipts verify: the signature does not check)\n  \
        2  the arguments are wrong (usage on stderr)\n\n\
        Every command has --help with an example; man pages: konvertctl(1), konvertctl-COMMAND(1)."
)]
struct Cli {
    #[command(flatten)]
    online: OnlineArgs,
    #[command(subcommand)]
    command: Command,
}

/// How the online commands reach konvertd.
#[derive(Debug, Args)]
struct OnlineArgs {
    /// The konvertd API socket (online commands).
    #[arg(
        long,
        global = true,
        env = "KONVERT_SOCKET",
        value_name = "PATH",
        default_value = client::DEFAULT_SOCKET
    )]
    socket: PathBuf,
    /// Take the API socket path from this konvert.toml (instead of --socket); give it before the command.
    #[arg(long = "config", value_name = "FILE")]
    socket_config: Option<PathBuf>,
    /// Print one JSON document on stdout instead of the human form (every command).
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start three gateways (kz.mvd, by.mvd, am.police) on 127.0.0.1 with fresh keys and play a short exchange.
    #[command(
        after_help = "Example:\n  konvertctl demo\n  konvertctl demo --keep /tmp/konvert-demo   # keep keys, envelopes and receipts\n\n\
        Runs a request, a clarification, an answer, a partial refusal with grounds and unsolicited\n\
        information through seal and open, with signed receipts, and prints the timeline: each\n\
        receipt verified, the refusal's grounds, and each case's state as both gateways see it\n\
        (--json: the same as one document)."
    )]
    Demo {
        /// Keep the gateway directories (configs, keys, stores) in this new or empty directory.
        #[arg(long, value_name = "DIR")]
        keep: Option<PathBuf>,
    },
    /// Create a gateway directory: keys (node, age, TLS, store master key), a signatory, profiles, konvert.toml and the public card.
    #[command(
        after_help = "Example:\n  konvertctl init --authority kz.mvd --dir /etc/konvert --listen 0.0.0.0:7443\n  \
        sudo konvertctl init --systemd --authority kz.mvd --listen 0.0.0.0:7443   # for the Debian package's unit\n\n\
        Then give DIR/card.toml (with --systemd: /etc/konvert/card.toml) to each peer, and add theirs with \
        `konvertctl peer add`. --systemd lays out /etc/konvert (konvert.toml 0640 root:konvert), \
        /etc/konvert/keys (0700 root, keys 0600: the unit's LoadCredential= sources) and /var/lib/konvert \
        (0700 konvert), with keys named by ${CREDENTIALS_DIRECTORY} in konvert.toml."
    )]
    Init {
        /// Authority id, for example kz.mvd.
        #[arg(long)]
        authority: AuthorityId,
        /// Directory to create (must not hold a konvert.toml yet).
        #[arg(long, required_unless_present = "systemd", conflicts_with = "systemd")]
        dir: Option<PathBuf>,
        /// Lay out /etc/konvert and /var/lib/konvert for the packaged systemd service (run as root).
        #[arg(long, conflicts_with = "api_socket")]
        systemd: bool,
        /// With --systemd: the root of the file system to lay out (for images and tests).
        #[arg(long, value_name = "DIR", default_value = "/", requires = "systemd")]
        root: PathBuf,
        /// With --systemd: the service's user and group.
        #[arg(long, value_name = "NAME", default_value = "konvert", requires = "systemd")]
        service_user: String,
        /// QUIC listen address.
        #[arg(long, default_value = "0.0.0.0:7443")]
        listen: std::net::SocketAddr,
        /// Path of the local API socket (default DIR/api.sock).
        #[arg(long)]
        api_socket: Option<PathBuf>,
        /// Human-readable authority name for the card.
        #[arg(long)]
        name: Option<String>,
        /// Id of the first signatory, whose key is made in DIR/keys/signatories/.
        #[arg(long, default_value = "head")]
        signatory: String,
    },
    /// Manage peer gateways.
    #[command(
        subcommand,
        after_help = "Example:\n  konvertctl peer add --config /etc/konvert/konvert.toml --card by.mvd-card.toml \\\n    \
        --address 198.51.100.20:7443 --agreement kz-by-2019\n  \
        systemctl reload konvertd   # the running daemon picks the peer up"
    )]
    Peer(PeerCommand),
    /// Create a gateway's node keys (Ed25519 signing key, age identity) and its public authority card.
    #[command(
        after_help = "Example:\n  konvertctl keygen --authority kz.mvd --dir /etc/konvert/keys\n\n\
        Writes DIR/node.key.pem and DIR/age.key (mode 0600) and DIR/card.toml (public; give it to peers)."
    )]
    Keygen {
        /// Authority id, for example kz.mvd.
        #[arg(long)]
        authority: AuthorityId,
        /// Directory for the keys (created with mode 0700 if missing).
        #[arg(long)]
        dir: PathBuf,
        /// Human-readable authority name for the card.
        #[arg(long)]
        name: Option<String>,
        /// Overwrite existing keys (old keys are lost).
        #[arg(long)]
        force: bool,
    },
    /// Manage signatories (the people who sign requests, Art. 9.3).
    #[command(
        subcommand,
        after_help = "Example:\n  konvertctl signatory keygen --out ivanov.key.pem"
    )]
    Signatory(SignatoryCommand),
    /// Seal, open and inspect envelope files offline.
    #[command(
        subcommand,
        after_help = "Example:\n  konvertctl envelope seal --keys kz/ --to by/card.toml --signer ivanov.key.pem \\\n    \
        --profile deploy/profiles/kz-by-2019.toml --in message.json --out request.env\n  \
        konvertctl envelope inspect --in request.env"
    )]
    Envelope(EnvelopeCommand),
    /// Write man pages or shell completions made from these definitions (for packaging).
    #[command(
        subcommand,
        hide = true,
        after_help = "Example:\n  konvertctl generate man --out target/assets/man\n  \
        konvertctl generate completions --out target/assets/completions"
    )]
    Generate(GenerateCommand),
    /// Hand a message (JSON) to konvertd: upload its attachments, then submit it.
    #[command(
        after_help = "Example:\n  konvertctl --socket /run/konvert/api.sock send request.json --signatory ivanov\n\n\
        FILE is a message (as in docs/examples) or a submit request {\"message\": ..., \"signatory\": ...}.\n\
        Attachments with \"file\": \"PATH\" (relative to FILE) are uploaded first. Prints the id and state."
    )]
    Send {
        /// The message JSON.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// The signatory whose key signs it [default: the request's, else head].
        #[arg(long, value_name = "ID")]
        signatory: Option<String>,
    },
    /// Show the node's status (peers, queues, overdue cases, store size, key ages, last sweep), or with an ID the state of a message and its receipt.
    #[command(
        after_help = "Example:\n  konvertctl --config /etc/konvert/konvert.toml status      # the node\n  \
        konvertctl --json status | jq '.peers[] | {authority, queue_depth}'\n  \
        konvertctl status 019ec9a6-9c80-7137-be01-be76fa861153   # one message\n  \
        konvertctl status --wait 30 019ec9a6-9c80-7137-be01-be76fa861153   # until its receipt is in (or 30 s)\n  \
        konvertctl --json status 019ec9a6-9c80-7137-be01-be76fa861153 | jq -r .state"
    )]
    Status {
        /// A message id (sent or received); without it, the node's status.
        id: Option<Id>,
        /// With an ID: while the outgoing message has no outcome yet, wait up
        /// to this many seconds (1-60) for its receipt.
        #[arg(long, value_name = "SECONDS", requires = "id")]
        wait: Option<u32>,
    },
    /// List delivery receipts, or show, export or verify one.
    Receipts(ReceiptsArgs),
    /// List received messages not yet acknowledged, or show or acknowledge one.
    Inbox(InboxArgs),
    /// List request cases (overdue, due soon) or show one with its history (Art. 10.3).
    Requests(RequestsArgs),
    /// Renamings and replacements of authorities (Art. 2): send one, or list the peers' directory.
    #[command(
        subcommand,
        after_help = "Example:\n  konvertctl authority list\n  \
        konvertctl authority rename --config /etc/konvert/konvert.toml --old kz.mvd --new kz.mia \\\n    \
        --name 'Министерство внутренних дел Республики Казахстан' --effective 2027-01-01T00:00:00Z"
    )]
    Authority(AuthorityCommand),
    /// List peer gateways: connected?, queue depth, oldest undelivered message.
    #[command(after_help = "Example:\n  konvertctl peers\n  konvertctl --json peers")]
    Peers,
    /// Ask konvertd whether it is working (exit status 1 when it is unavailable).
    #[command(after_help = "Example:\n  konvertctl --config /etc/konvert/konvert.toml health")]
    Health,
    /// Read the audit trail, or verify its hash chain (and the audit head log) and say where it breaks.
    #[command(
        subcommand,
        after_help = "Example:\n  konvertctl audit verify      # exit status 1 if the chain is broken\n  \
        konvertctl audit list --from 1200 --limit 50\n  \
        konvertctl --json audit list | jq -c '.items[] | {seq, kind, message}'"
    )]
    Audit(AuditCommand),
    /// A message's whole story from the audit trail: accepted, sent, delivered with receipt, received, acknowledged, destroyed.
    #[command(
        after_help = "Example:\n  konvertctl story 019ec9a6-9c80-7137-be01-be76fa861153\n  \
        konvertctl --json story 019ec9a6-9c80-7137-be01-be76fa861153 | jq -r '.steps[].step'"
    )]
    Story {
        /// The message id (sent or received).
        id: Id,
    },
    /// What will be destroyed when and what was destroyed (counts and ids, never content); purge a closed case early.
    Retention(RetentionArgs),
    /// Offline store maintenance, with konvertd stopped: re-seal the keyring under a new master key.
    #[command(
        subcommand,
        after_help = "Example:\n  systemctl stop konvertd\n  \
        konvertctl store rekey --config /etc/konvert/konvert.toml --new-master-key /etc/konvert/keys/master.key.new"
    )]
    Store(StoreCommand),
    /// Rotate this gateway's own keys (TLS key, node signing key, age identity) and retire the old ones.
    #[command(
        subcommand,
        after_help = "Example:\n  konvertctl keys rotate --config /etc/konvert/konvert.toml --keys-dir /etc/konvert/keys --all --overlap 7d\n  \
        systemctl restart konvertd   # credentials are read at start; announces the rotation to every peer\n  \
        konvertctl keys retire --config /etc/konvert/konvert.toml --keys-dir /etc/konvert/keys   # after the overlap"
    )]
    Keys(KeysCommand),
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Make new keys next to the old ones, update card.toml and sign the rotation with the root key.
    #[command(
        after_help = "Example:\n  konvertctl keys rotate --config /etc/konvert/konvert.toml --tls --node --overlap 48h\n  \
        systemctl reload konvertd\n\n\
        The new keys are used towards each peer once it has accepted the signed rotation (konvertd sends it on \
        start and reload); the old TLS pin and node key stay accepted by peers for the overlap. The old age \
        identity stays in age.key, so envelopes sealed to it still open. Needs the authority root key \
        (keys/root.key.pem). Exit code 1 if a rotation is not retired yet or a key file is unusable."
    )]
    Rotate {
        /// The gateway's konvert.toml (names the keys directory).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The keys directory, when konvert.toml names the keys by ${CREDENTIALS_DIRECTORY} (packaged service: /etc/konvert/keys).
        #[arg(long, value_name = "DIR")]
        keys_dir: Option<PathBuf>,
        /// Rotate the QUIC TLS key and certificate.
        #[arg(long)]
        tls: bool,
        /// Rotate the node signing key.
        #[arg(long)]
        node: bool,
        /// Rotate the age identity.
        #[arg(long)]
        age: bool,
        /// Rotate all three.
        #[arg(long, conflicts_with_all = ["tls", "node", "age"])]
        all: bool,
        /// How long peers keep accepting the old TLS pin and node key (1m to 366d; 90s, 48h, 7d).
        #[arg(long, value_name = "DURATION", default_value = "7d", value_parser = konvert_gateway::config::parse_span)]
        overlap: std::time::Duration,
    },
    /// Remove the old keys of the last rotation after its overlap (previous/, old age identities, rotation.cose).
    #[command(
        after_help = "Example:\n  konvertctl keys retire --config /etc/konvert/konvert.toml\n  \
        systemctl reload konvertd\n\n\
        Refused (exit code 1) while the overlap lasts, unless --force."
    )]
    Retire {
        /// The gateway's konvert.toml.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The keys directory, when konvert.toml names the keys by ${CREDENTIALS_DIRECTORY}.
        #[arg(long, value_name = "DIR")]
        keys_dir: Option<PathBuf>,
        /// Retire before the overlap ends (peers then refuse what was signed or sealed with the old keys).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// List audit events from a sequence number (ids, times, peers, counts, codes; no content).
    #[command(after_help = "Example:\n  konvertctl audit list --from 1200 --limit 50\n  \
        konvertctl --json audit list --limit 1000 | jq -r .next   # where the next page starts")]
    List {
        /// The first sequence number (default: the oldest kept).
        #[arg(long, value_name = "SEQ")]
        from: Option<u64>,
        /// At most this many (1-1000; the daemon's default is 100).
        #[arg(long, value_name = "N")]
        limit: Option<u32>,
    },
    /// Verify the hash chain (and against the configured audit head log); exit status 1 and where it breaks if it does.
    #[command(
        after_help = "Example:\n  konvertctl audit verify\n  konvertctl --json audit verify | jq .broken"
    )]
    Verify,
}

#[derive(Debug, Args)]
#[command(
    args_conflicts_with_subcommands = true,
    after_help = "Example:\n  konvertctl retention                 # per expiry hour\n  \
    konvertctl retention --by day --events 20\n  \
    konvertctl retention --ids           # and the ids: per upcoming bucket, per destruction\n  \
    konvertctl retention show 2026-11-22T10:00:00Z   # the ids destroyed in that hour\n  \
    konvertctl retention purge --case 019ec9a6-9c80-7137-be01-be76fa861153"
)]
struct RetentionArgs {
    #[command(subcommand)]
    command: Option<RetentionCommand>,
    /// Count what will be destroyed per expiry hour or per UTC day.
    #[arg(long, value_parser = ["hour", "day"], default_value = "hour")]
    by: String,
    /// Show at most this many destruction events of the audit trail (0-1000; default 100).
    #[arg(long, value_name = "N")]
    events: Option<u32>,
    /// Also list message ids (never content): those of each upcoming bucket and those each destruction event records.
    #[arg(long)]
    ids: bool,
}

#[derive(Debug, Subcommand)]
enum RetentionCommand {
    /// The ids of the messages whose retention ends in the hour (or, with --by day, the UTC day) holding TIME.
    #[command(after_help = "Example:\n  konvertctl retention show 2026-11-22T10:00:00Z\n  \
        konvertctl --json retention show 2026-11-22T00:00:00Z --by day | jq -r '.upcoming[].ids[].id'")]
    Show {
        /// A time in the period (RFC 3339).
        #[arg(value_name = "RFC3339")]
        time: Timestamp,
        /// The period: an hour or a UTC day.
        #[arg(long, value_parser = ["hour", "day"], default_value = "hour")]
        by: String,
    },
    /// Destroy a closed case and its messages now, before their retention ends (irreversible).
    #[command(
        after_help = "Example:\n  konvertctl retention purge --case 019ec9a6-9c80-7137-be01-be76fa861153\n\n\
        The case key is destroyed (its messages become unreadable at once), the case can take no\n\
        more messages, and the audit trail records Destroyed events with the count, the ids\n\
        (at most 512 per event) and their digest: `konvertctl retention --ids` lists them."
    )]
    Purge {
        /// The case id (the id of the request that opened it).
        #[arg(long, value_name = "ID")]
        case: Id,
    },
}

#[derive(Debug, Subcommand)]
enum StoreCommand {
    /// Re-seal the store's keyring under a new master key (konvertd must be stopped; data keys and messages unchanged).
    #[command(after_help = "Example:\n  systemctl stop konvertd\n  \
        (umask 077; openssl rand -hex 32 > /etc/konvert/keys/master.key.new)\n  \
        konvertctl store rekey --config /etc/konvert/konvert.toml --new-master-key /etc/konvert/keys/master.key.new\n  \
        # set store.master_key_file to the new file, start konvertd, then remove the old key\n\n\
        Safe to run again after a crash: a keyring already sealed under the new key is left as it is.")]
    Rekey {
        /// The gateway's konvert.toml (names the data directory and the current master key).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The new master key file (32 bytes as 64 hex characters, raw or base64; mode 0600).
        #[arg(long, value_name = "FILE")]
        new_master_key: PathBuf,
    },
}

#[derive(Debug, Args)]
#[command(
    args_conflicts_with_subcommands = true,
    after_help = "Example:\n  konvertctl receipts --peer by.mvd --state rejected --since 2026-11-01T00:00:00Z\n  \
    konvertctl receipts export 019ec9a6-9c80-7137-be01-be76fa861153 --out receipt.cose\n  \
    konvertctl receipts verify receipt.cose --card by.mvd-card.toml"
)]
struct ReceiptsArgs {
    #[command(subcommand)]
    command: Option<ReceiptsCommand>,
    /// Only receipts exchanged with this authority.
    #[arg(long, value_name = "ID")]
    peer: Option<AuthorityId>,
    /// Only accepted or only rejected ones.
    #[arg(long, value_parser = ["accepted", "rejected"])]
    state: Option<String>,
    /// Only receipts at or after this time (RFC 3339).
    #[arg(long, value_name = "RFC3339")]
    since: Option<Timestamp>,
    /// Only receipts before this time (RFC 3339).
    #[arg(long, value_name = "RFC3339")]
    until: Option<Timestamp>,
    /// At most this many (1-1000; the daemon's default is 100).
    #[arg(long, value_name = "N")]
    limit: Option<u32>,
    /// Continue after this position (the `next` printed with --json).
    #[arg(long, value_name = "CURSOR")]
    after: Option<Cursor>,
    /// Only receipts of messages sent (outbound: signed by the peer) or
    /// received (inbound: issued by this gateway).
    #[arg(long, value_parser = ["outbound", "inbound"])]
    direction: Option<String>,
    /// Follow `next` and list every page.
    #[arg(long)]
    all: bool,
}

#[derive(Debug, Subcommand)]
enum ReceiptsCommand {
    /// Show one receipt, decoded.
    #[command(after_help = "Example:\n  konvertctl receipts show 019ec9a6-9c80-7137-be01-be76fa861153")]
    Show {
        /// The envelope id (the message id for messages sent by konvertd).
        id: Id,
    },
    /// Write the signed receipt (COSE_Sign1, as received) to a file.
    #[command(
        after_help = "Example:\n  konvertctl receipts export 019ec9a6-9c80-7137-be01-be76fa861153 --out receipt.cose\n\n\
        Check it later, without konvertd: konvertctl receipts verify receipt.cose --card PEER_CARD"
    )]
    Export {
        /// The envelope id.
        id: Id,
        /// Where to write it (mode 0644).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Verify an exported receipt offline with the receiving authority's card.
    #[command(
        after_help = "Example:\n  konvertctl receipts verify receipt.cose --card by.mvd-card.toml\n\n\
        Prints the envelope id, digest, sender, receiver, time and outcome; exit status 1 if the\n\
        signature is not by the card's node key."
    )]
    Verify {
        /// The exported receipt.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// The receiver's authority card.
        #[arg(long, value_name = "PEER_CARD")]
        card: PathBuf,
    },
}

#[derive(Debug, Args)]
#[command(
    args_conflicts_with_subcommands = true,
    after_help = "Example:\n  konvertctl inbox --wait 30\n  \
    konvertctl inbox show 019ec9a6-9c80-7137-be01-be76fa861153 --attachments-dir in/\n  \
    konvertctl inbox ack 019ec9a6-9c80-7137-be01-be76fa861153"
)]
struct InboxArgs {
    #[command(subcommand)]
    command: Option<InboxCommand>,
    /// Wait up to this many seconds (1-60) for a message if there is none.
    #[arg(long, value_name = "SECONDS")]
    wait: Option<u32>,
    /// At most this many (1-1000; the daemon's default is 100).
    #[arg(long, value_name = "N")]
    limit: Option<u32>,
    /// Only messages that arrived after this cursor.
    #[arg(long, value_name = "CURSOR")]
    after: Option<Cursor>,
}

#[derive(Debug, Subcommand)]
enum InboxCommand {
    /// Print a received message (decrypted and verified) as JSON; fetching does not acknowledge it.
    #[command(
        after_help = "Example:\n  konvertctl inbox show 019ec9a6-9c80-7137-be01-be76fa861153 --attachments-dir in/\n\n\
        With --json, prints the inbox entry, signatory and attachment list as well."
    )]
    Show {
        /// The message id.
        id: Id,
        /// Download the attachments into this directory (attachment-N.EXT, mode 0600).
        #[arg(long, value_name = "DIR")]
        attachments_dir: Option<PathBuf>,
    },
    /// Acknowledge a received message: it is not listed again.
    #[command(after_help = "Example:\n  konvertctl inbox ack 019ec9a6-9c80-7137-be01-be76fa861153")]
    Ack {
        /// The message id.
        id: Id,
    },
}

#[derive(Debug, Args)]
#[command(
    args_conflicts_with_subcommands = true,
    after_help = "Example:\n  konvertctl requests --overdue\n  konvertctl requests --due-within 7d\n  \
    konvertctl requests show 019ec9a6-9c80-7137-be01-be76fa861153\n\n\
    Cases hold ids, states and times only: no personal data, no message text."
)]
struct RequestsArgs {
    #[command(subcommand)]
    command: Option<RequestsCommand>,
    /// Only open cases whose deadline has passed.
    #[arg(long, conflicts_with = "due_within")]
    overdue: bool,
    /// Only open cases due within this time (7d, 12h, ...).
    #[arg(long, value_name = "DURATION")]
    due_within: Option<String>,
    /// At most this many (1-1000; the daemon's default is 100).
    #[arg(long, value_name = "N")]
    limit: Option<u32>,
}

#[derive(Debug, Subcommand)]
enum RequestsCommand {
    /// Show one case: state, deadline, grounds and every message of it (ids, kinds, times).
    #[command(after_help = "Example:\n  konvertctl requests show 019ec9a6-9c80-7137-be01-be76fa861153")]
    Show {
        /// The case id (the request's message id) or the id of any message of the case.
        id: Id,
    },
    /// Close an ended case on this gateway (Art. 11.5): answered, refused or withdrawn; it then takes no messages.
    #[command(
        after_help = "Example:\n  konvertctl requests close 019ec9a6-9c80-7137-be01-be76fa861153\n  \
        konvertctl retention purge --case 019ec9a6-9c80-7137-be01-be76fa861153   # destroy it early\n\n\
        Closing is local: the peer keeps its own case. Closing a closed case again changes nothing."
    )]
    Close {
        /// The case id (the request's message id).
        id: Id,
    },
}

#[derive(Debug, Subcommand)]
enum AuthorityCommand {
    /// Art. 2: an authority of this party changes its name and id; sign the change with the root key and send it to every peer.
    #[command(
        after_help = "Example:\n  konvertctl authority rename --config /etc/konvert/konvert.toml --keys-dir /etc/konvert/keys \\\n    \
        --old kz.mvd --new kz.mvd2 \\\n    \
        --name 'Министерство внутренних дел Республики Казахстан' --effective 2027-01-01T00:00:00Z\n\n\
        konvertd (running, reached through the configuration's API socket) queues one signed\n\
        directory_update to every peer; `konvertctl status ID` follows each. The old id stays\n\
        resolvable at the peers. Update the agreement profiles (a new version) as well."
    )]
    Rename(AuthorityChangeArgs),
    /// Art. 2: another body replaces an authority of this party; sign the change with the root key and send it to every peer.
    #[command(
        after_help = "Example:\n  konvertctl authority replace --config /etc/konvert/konvert.toml --old kz.mtszn --new kz.mtszn2 \\\n    \
        --name 'Министерство труда Республики Казахстан' --effective 2027-01-01T00:00:00Z"
    )]
    Replace(AuthorityChangeArgs),
    /// The peers' signatory rosters (ids and validity) and the renamings and replacements received from them.
    #[command(after_help = "Example:\n  konvertctl --config /etc/konvert/konvert.toml authority list")]
    List,
}

#[derive(Debug, Args)]
struct AuthorityChangeArgs {
    /// The configuration file of the gateway (its root key signs; its API socket is used).
    #[arg(long)]
    config: PathBuf,
    /// The keys directory, when konvert.toml names the keys by ${CREDENTIALS_DIRECTORY} (packaged service: /etc/konvert/keys).
    #[arg(long, value_name = "DIR")]
    keys_dir: Option<PathBuf>,
    /// The authority's id until the change.
    #[arg(long)]
    old: AuthorityId,
    /// The authority's id from the change on.
    #[arg(long)]
    new: AuthorityId,
    /// The new name, in Russian.
    #[arg(long)]
    name: String,
    /// The new name, in English.
    #[arg(long)]
    name_en: Option<String>,
    /// When the change takes effect (RFC 3339).
    #[arg(long, value_name = "RFC3339")]
    effective: Timestamp,
    /// A note for the peers.
    #[arg(long)]
    note: Option<String>,
    /// The signatory who signs the messages [default: the first configured one the roster lets sign now].
    #[arg(long, value_name = "ID")]
    signatory: Option<konvert_envelope::model::SignatoryId>,
}

#[derive(Debug, Subcommand)]
enum PeerCommand {
    /// Add a peer gateway from its authority card.
    #[command(
        after_help = "Example:\n  konvertctl peer add --config /etc/konvert/konvert.toml --card by.mvd-card.toml \\\n    \
        --address 192.0.2.10:7443 --agreement kz-by-2019\n\n\
        The card is copied next to the configuration; a running konvertd picks the peer up on SIGHUP."
    )]
    Add {
        /// The configuration file to change.
        #[arg(long)]
        config: PathBuf,
        /// The peer's card (its DIR/card.toml).
        #[arg(long)]
        card: PathBuf,
        /// Address of the peer (host:port); repeat for several, tried in turn.
        #[arg(long = "address", required = true)]
        addresses: Vec<String>,
        /// Agreement under which messages are exchanged; repeat for several.
        #[arg(long = "agreement", required = true)]
        agreements: Vec<konvert_envelope::model::AgreementId>,
    },
}

#[derive(Debug, Subcommand)]
enum GenerateCommand {
    /// Man pages: konvertctl.1 and konvertctl-COMMAND.1 for every command.
    #[command(after_help = "Example:\n  konvertctl generate man --out target/assets/man")]
    Man {
        /// Directory to write them to (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Shell completions: konvertctl (bash), _konvertctl (zsh), konvertctl.fish.
    #[command(after_help = "Example:\n  konvertctl generate completions --out target/assets/completions")]
    Completions {
        /// Directory to write them to (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum SignatoryCommand {
    /// Create a signatory's Ed25519 key: private key in FILE (PKCS#8 PEM, mode 0600), public key in FILE.pub.
    #[command(
        after_help = "Example:\n  konvertctl signatory keygen --out ivanov.key.pem\n\n\
        OpenSSL reads both files: openssl pkey -pubin -in ivanov.key.pem.pub -text"
    )]
    Keygen {
        /// Where to write the private key.
        #[arg(long)]
        out: PathBuf,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Put a signatory on this authority's roster (a new key for a new id) and sign a new roster version.
    #[command(
        after_help = "Example:\n  konvertctl signatory add --config gw/konvert.toml --id petrov \\\n    \
        --name 'Петров Пётр Петрович' --position 'Заместитель министра'\n  \
        kill -HUP $(pidof konvertd)   # sends the new roster to every peer\n\n  \
        # the packaged service (keys are credentials, copied when it starts):\n  \
        konvertctl signatory add --config /etc/konvert/konvert.toml --keys-dir /etc/konvert/keys --id petrov ...\n  \
        systemctl restart konvertd\n\n\
        The first roster replaces the card's signatories at the peers: add everyone who keeps signing."
    )]
    Add {
        /// The configuration file of the gateway.
        #[arg(long)]
        config: PathBuf,
        /// The keys directory, when konvert.toml names the keys by ${CREDENTIALS_DIRECTORY} (packaged service: /etc/konvert/keys).
        #[arg(long, value_name = "DIR")]
        keys_dir: Option<PathBuf>,
        /// The signatory id (a configured one keeps its key).
        #[arg(long)]
        id: String,
        /// Full name, in Russian.
        #[arg(long)]
        name: String,
        /// Position, in Russian.
        #[arg(long)]
        position: String,
        /// Last time the signatory may sign (RFC 3339); open-ended if absent.
        #[arg(long, value_name = "RFC3339")]
        valid_until: Option<Timestamp>,
    },
    /// Take a signatory off the roster (Art. 9.4) and sign a new version; peers refuse its later signatures.
    #[command(
        after_help = "Example:\n  konvertctl signatory revoke --config /etc/konvert/konvert.toml --keys-dir /etc/konvert/keys --id petrov\n  \
        systemctl restart konvertd   # under systemd; a konvertd run by hand takes SIGHUP\n\n\
        konvertd refuses the revoked signatory's submissions once it has read the new roster."
    )]
    Revoke {
        /// The configuration file of the gateway.
        #[arg(long)]
        config: PathBuf,
        /// The keys directory, when konvert.toml names the keys by ${CREDENTIALS_DIRECTORY} (packaged service: /etc/konvert/keys).
        #[arg(long, value_name = "DIR")]
        keys_dir: Option<PathBuf>,
        /// The signatory id.
        #[arg(long)]
        id: String,
    },
    /// List the roster and the configured signatories.
    #[command(
        after_help = "Example:\n  konvertctl signatory list --config /etc/konvert/konvert.toml --keys-dir /etc/konvert/keys\n  \
        konvertctl --json signatory list --config gw/konvert.toml | jq -r '.signatories[].id'"
    )]
    List {
        /// The configuration file of the gateway.
        #[arg(long)]
        config: PathBuf,
        /// The keys directory, when konvert.toml names the keys by ${CREDENTIALS_DIRECTORY} (packaged service: /etc/konvert/keys).
        #[arg(long, value_name = "DIR")]
        keys_dir: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
struct TimeArg {
    /// Time to use instead of the system clock (RFC 3339), for checking profiles and signer validity.
    #[arg(long, value_name = "RFC3339")]
    now: Option<Timestamp>,
}

#[derive(Debug, Subcommand)]
enum EnvelopeCommand {
    /// Validate, sign and encrypt a message (JSON) into an envelope file.
    #[command(
        after_help = "Example:\n  konvertctl envelope seal --keys kz/ --to by/card.toml --signer ivanov.key.pem \\\n    \
        --profile deploy/profiles/kz-by-2019.toml --in docs/examples/request.json --out request.env\n\n\
        Attachments with a \"file\" field are read from that path, relative to the message file."
    )]
    Seal {
        /// Sender's key directory (from `konvertctl keygen`).
        #[arg(long)]
        keys: PathBuf,
        /// Recipient's authority card.
        #[arg(long)]
        to: PathBuf,
        /// Signatory's private key (PKCS#8 PEM).
        #[arg(long)]
        signer: PathBuf,
        /// Agreement profile (TOML) the message is sent under.
        #[arg(long)]
        profile: PathBuf,
        /// The message as JSON.
        #[arg(long = "in")]
        input: PathBuf,
        /// Where to write the envelope.
        #[arg(long)]
        out: PathBuf,
        /// Overwrite an existing output file.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        time: TimeArg,
    },
    /// Check and decrypt an envelope file; prints the message as JSON after every check has passed.
    #[command(
        after_help = "Example:\n  konvertctl envelope open --keys by/ --from kz/card.toml --signers ivanov.key.pem.pub \\\n    \
        --profile deploy/profiles/kz-by-2019.toml --in request.env\n\n\
        Checks in order: size, structure, node signature, decryption, signatory signature,\n\
        signed routing, message decoding, profile. The first failure is reported."
    )]
    Open {
        /// Recipient's key directory.
        #[arg(long)]
        keys: PathBuf,
        /// Sender's authority card.
        #[arg(long)]
        from: PathBuf,
        /// Public keys (SPKI PEM) of the sender's signatories; repeat or separate with commas.
        #[arg(long, value_delimiter = ',', required = true)]
        signers: Vec<PathBuf>,
        /// Agreement profile (TOML).
        #[arg(long)]
        profile: PathBuf,
        /// The envelope file.
        #[arg(long = "in")]
        input: PathBuf,
        /// Write decrypted attachments into this directory.
        #[arg(long)]
        attachments_dir: Option<PathBuf>,
        /// Largest envelope accepted, in bytes.
        #[arg(long, default_value_t = Limits::default().max_envelope)]
        max_size: u64,
        #[command(flatten)]
        time: TimeArg,
    },
    /// Print the cleartext header of an envelope as JSON (checks no signature).
    #[command(
        after_help = "Example:\n  konvertctl envelope inspect --in request.env --age-body body.age\n  \
        age -d -i by/age.key body.age   # any age implementation decrypts the body"
    )]
    Inspect {
        /// The envelope file.
        #[arg(long = "in")]
        input: PathBuf,
        /// Also write the encrypted body as a standalone age file.
        #[arg(long)]
        age_body: Option<PathBuf>,
        /// Overwrite an existing --age-body file.
        #[arg(long)]
        force: bool,
    },
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<(), offline::Error> {
    let s = serde_json::to_string_pretty(v)
        .map_err(|e| offline::Error::Usage(format!("cannot print JSON: {e}")))?;
    println!("{s}");
    Ok(())
}

/// Why a command failed: an offline command's error or an online one's.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Offline(#[from] offline::Error),
    #[error(transparent)]
    Online(#[from] ClientError),
    #[error("konvertd is unavailable (health status unavailable)")]
    Unavailable,
    #[error("{0}")]
    Other(String),
}

fn print_out<T: serde::Serialize>(json: bool, v: &T, text: impl FnOnce(&T) -> String) -> Result<(), Failure> {
    if json {
        print_json(v)?;
    } else {
        print!("{}", text(v));
    }
    Ok(())
}

/// The socket the online commands use: from --config's konvert.toml, else --socket/KONVERT_SOCKET.
fn socket_path(o: &OnlineArgs) -> Result<PathBuf, Failure> {
    match &o.socket_config {
        Some(cfg) => {
            let text = konvert_gateway::files::read_text(cfg, konvert_gateway::config::MAX_CONFIG)
                .map_err(offline::Error::from)?;
            let c = konvert_gateway::config::Config::parse(&text, cfg)
                .map_err(|e| Failure::Other(e.to_string()))?;
            Ok(c.api.socket)
        }
        None => Ok(o.socket.clone()),
    }
}

async fn online(o: &OnlineArgs, command: Command) -> Result<(), Failure> {
    let json = o.json;
    // receipts verify works offline: no socket needed.
    if let Command::Receipts(ReceiptsArgs {
        command: Some(ReceiptsCommand::Verify { file, card }),
        ..
    }) = &command
    {
        let (r, _card) = client::verify_receipt_file(file, card)?;
        return print_out(json, &r, client::verified_receipt_text);
    }
    let c = Client::new(socket_path(o)?);
    match command {
        Command::Send { file, signatory } => {
            let s = c.send_file(&file, signatory.as_deref()).await?;
            print_out(json, &s, |s| format!("{} {}\n", s.id, s.state.as_str()))
        }
        Command::Status { id: Some(id), wait } => {
            print_out(json, &c.status_wait(id, wait).await?, client::status_text)
        }
        Command::Status { id: None, .. } => {
            print_out(json, &c.node_status().await?, client::node_status_text)
        }
        Command::Audit(AuditCommand::List { from, limit }) => {
            print_out(json, &c.audit(from, limit).await?, |p| {
                let mut t = client::audit_table(&p.items);
                if let Some(n) = &p.next {
                    t.push_str(&format!("(more: --from {n})\n"));
                }
                t
            })
        }
        Command::Audit(AuditCommand::Verify) => {
            let v = c.audit_verify().await?;
            print_out(json, &v, client::audit_verify_text)?;
            if !v.ok {
                return Err(Failure::Other(
                    "the audit trail does not verify (see the report above)".into(),
                ));
            }
            Ok(())
        }
        Command::Story { id } => print_out(json, &c.story(id).await?, client::story_text),
        Command::Retention(args) => match args.command {
            None => print_out(
                json,
                &c.retention(args.by == "day", args.events, args.ids, None).await?,
                client::retention_text,
            ),
            Some(RetentionCommand::Show { time, by }) => print_out(
                json,
                &c.retention(by == "day", Some(0), true, Some(time)).await?,
                client::retention_text,
            ),
            Some(RetentionCommand::Purge { case }) => {
                print_out(json, &c.purge_case(case).await?, client::purged_text)
            }
        },
        Command::Receipts(args) => match args.command {
            None => {
                let q = ReceiptQuery {
                    peer: args.peer,
                    direction: args.direction.as_deref().map(|d| match d {
                        "inbound" => Direction::Inbound,
                        _ => Direction::Outbound,
                    }),
                    state: args.state.as_deref().and_then(|s| s.parse::<ReceiptState>().ok()),
                    since: args.since,
                    until: args.until,
                    limit: args.limit,
                    after: args.after,
                };
                let page = if args.all {
                    c.receipts_all(&q, usize::MAX).await?
                } else {
                    c.receipts(&q).await?
                };
                if let (false, Some(next)) = (json, &page.next) {
                    eprintln!("more receipts follow: add --after {next} (or list them all with --all)");
                }
                print_out(json, &page, |p| client::receipts_table(&p.items))
            }
            Some(ReceiptsCommand::Show { id }) => {
                print_out(json, &c.receipt(id).await?, client::receipt_text)
            }
            Some(ReceiptsCommand::Export { id, out, force }) => {
                let n = c.export_receipt(id, &out, force).await?;
                let v = serde_json::json!({"envelope_id": id, "file": out, "length": n});
                print_out(json, &v, |_| {
                    format!("wrote the receipt of {id} to {} ({n} bytes)\n", out.display())
                })
            }
            Some(ReceiptsCommand::Verify { .. }) => Ok(()), // handled above
        },
        Command::Inbox(args) => match args.command {
            None => {
                let q = InboxQuery {
                    wait: args.wait,
                    limit: args.limit,
                    after: args.after,
                };
                let page = c.inbox(&q).await?;
                print_out(json, &page, |p| client::inbox_table(&p.items))
            }
            Some(InboxCommand::Show { id, attachments_dir }) => {
                let m = c.inbox_get(id).await?;
                if let Some(dir) = attachments_dir {
                    for f in c.save_attachments(&m, &dir).await? {
                        eprintln!("wrote {}", f.display());
                    }
                }
                if json {
                    print_json(&m)?;
                } else {
                    print_json(&m.message)?;
                }
                Ok(())
            }
            Some(InboxCommand::Ack { id }) => {
                let a = c.inbox_ack(id).await?;
                print_out(json, &a, |a| format!("{} {}\n", a.id, a.state.as_str()))
            }
        },
        Command::Requests(args) => match args.command {
            None => {
                let page = c
                    .cases(args.overdue, args.due_within.as_deref(), args.limit)
                    .await?;
                print_out(json, &page, |p| {
                    konvert_gateway::api::cases::cases_table(&p.items)
                })
            }
            Some(RequestsCommand::Show { id }) => {
                print_out(json, &c.case(id).await?, konvert_gateway::api::cases::case_text)
            }
            Some(RequestsCommand::Close { id }) => print_out(
                json,
                &c.close_case(id).await?,
                konvert_gateway::api::cases::case_text,
            ),
        },
        Command::Authority(AuthorityCommand::List) => print_out(
            json,
            &c.directory().await?,
            konvert_gateway::api::directory::directory_text,
        ),
        Command::Authority(AuthorityCommand::Rename(_) | AuthorityCommand::Replace(_)) => Ok(()), // handled in run
        Command::Peers => print_out(json, &c.peers().await?, |p| client::peers_table(p)),
        Command::Health => {
            let h = c.health().await?;
            print_out(json, &h, client::health_text)?;
            if h.status == konvert_gateway::api::types::HealthStatus::Unavailable {
                return Err(Failure::Unavailable);
            }
            Ok(())
        }
        _ => Err(Failure::Other("not an online command".into())),
    }
}

fn run_online(o: &OnlineArgs, command: Command) -> Result<(), Failure> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Other(format!("cannot start the async runtime: {e}")))?;
    rt.block_on(online(o, command))
}

fn run(cli: Cli) -> Result<(), Failure> {
    let json = cli.online.json;
    match cli.command {
        Command::Demo { keep } => {
            let kept = keep.is_some();
            let (dir, _guard) = konvert_gateway::demo::workdir(keep)?;
            let report = konvert_gateway::demo::run(&dir)?;
            #[derive(serde::Serialize)]
            struct Demo<'a> {
                #[serde(flatten)]
                report: &'a konvert_gateway::demo::DemoReport,
                kept: bool,
            }
            print_out(
                json,
                &Demo {
                    report: &report,
                    kept,
                },
                |d| {
                    let mut t = konvert_gateway::demo::demo_text(d.report);
                    if kept {
                        t.push_str(&format!(
                        "\nKept in {0}: a working directory per gateway (konvert.toml, keys, store).\n\
                         Continue by hand: konvertd --config {0}/kz.mvd/konvert.toml & konvertctl --config {0}/kz.mvd/konvert.toml peers\n",
                        dir.display()
                    ));
                    } else {
                        t.push_str(
                        "\nThe daemons were stopped and nothing was left behind (--keep DIR keeps the directories).\n",
                    );
                    }
                    t
                },
            )?;
        }
        Command::Init {
            authority,
            dir: None,
            listen,
            name,
            signatory,
            root,
            service_user,
            ..
        } => {
            let r = konvert_gateway::init::init_systemd(&konvert_gateway::init::SystemdOptions {
                authority,
                root,
                listen,
                name,
                signatory,
                service_user,
            })?;
            print_out(json, &r, konvert_gateway::init::systemd_text)?;
        }
        Command::Init {
            authority,
            dir: Some(dir),
            listen,
            api_socket,
            name,
            signatory,
            ..
        } => {
            let r = konvert_gateway::init::init(&konvert_gateway::init::InitOptions {
                authority,
                dir,
                listen,
                api_socket,
                name,
                signatory,
                force: false,
            })?;
            let v = serde_json::json!({
                "authority": r.card_value.authority,
                "config": r.config,
                "card": r.card,
                "tls_pin": r.card_value.tls_pin,
                "node_key_id": r.card_value.node_key.key_id().to_string(),
            });
            print_out(json, &v, |_| {
                let mut t = format!(
                    "created {}\n  public card (give to peers): {}\n",
                    r.config.display(),
                    r.card.display()
                );
                if let Some(pin) = &r.card_value.tls_pin {
                    t.push_str(&format!("  TLS pin: {pin}\n"));
                }
                t
            })?;
        }
        Command::Peer(PeerCommand::Add {
            config,
            card,
            addresses,
            agreements,
        }) => {
            let c = konvert_gateway::init::peer_add(&config, &card, &addresses, &agreements)?;
            let v = serde_json::json!({
                "authority": c.authority,
                "config": config,
                "addresses": addresses,
                "agreements": agreements,
                "tls_pin": c.tls_pin,
            });
            print_out(json, &v, |_| {
                format!(
                    "added peer {} to {}; a running konvertd picks it up on reload (systemctl reload konvertd)\n",
                    c.authority,
                    config.display()
                )
            })?;
        }
        Command::Keygen {
            authority,
            dir,
            name,
            force,
        } => {
            let card = offline::keygen(&authority, &dir, name, force)?;
            let v = serde_json::json!({
                "authority": card.authority,
                "dir": dir,
                "node_key_id": card.node_key.key_id().to_string(),
                "age_recipients": card.age_recipients,
                "card": dir.join(offline::CARD_FILE),
            });
            print_out(json, &v, |_| {
                let mut t = format!(
                    "created node keys for {} in {}\n  node key id: {}\n",
                    card.authority,
                    dir.display(),
                    card.node_key.key_id()
                );
                for r in &card.age_recipients {
                    t.push_str(&format!("  age recipient: {r}\n"));
                }
                t.push_str(&format!(
                    "  card (give to peers): {}\n",
                    dir.join(offline::CARD_FILE).display()
                ));
                t
            })?;
        }
        Command::Signatory(SignatoryCommand::Keygen { out, force }) => {
            let key = offline::signatory_keygen(&out, force)?;
            let v = serde_json::json!({
                "key": out,
                "public_key": offline::pub_path(&out),
                "key_id": key.key_id().to_string(),
            });
            print_out(json, &v, |_| {
                format!(
                    "created signatory key {} (key id {})\n  public key: {}\n",
                    out.display(),
                    key.key_id(),
                    offline::pub_path(&out).display()
                )
            })?;
        }
        Command::Signatory(SignatoryCommand::Add {
            config,
            keys_dir,
            id,
            name,
            position,
            valid_until,
        }) => {
            let systemd = signatories::credentials_layout(&config);
            let r = signatories::add(
                &config,
                keys_dir.as_deref(),
                &id,
                &name,
                &position,
                valid_until,
                Timestamp::now(),
            )?;
            print_out(
                json,
                &signatories::changed(&r, &id, true, systemd),
                signatories::changed_text,
            )?;
        }
        Command::Signatory(SignatoryCommand::Revoke { config, keys_dir, id }) => {
            let systemd = signatories::credentials_layout(&config);
            let r = signatories::revoke(&config, keys_dir.as_deref(), &id, Timestamp::now())?;
            print_out(
                json,
                &signatories::changed(&r, &id, false, systemd),
                signatories::changed_text,
            )?;
        }
        Command::Signatory(SignatoryCommand::List { config, keys_dir }) => {
            let v = signatories::list(&config, keys_dir.as_deref())?;
            print_out(json, &v, signatories::list_table)?;
        }
        Command::Envelope(EnvelopeCommand::Seal {
            keys,
            to,
            signer,
            profile,
            input,
            out,
            force,
            time,
        }) => {
            let now = time.now.unwrap_or_else(Timestamp::now);
            let s = offline::seal_file(&keys, &to, &signer, &profile, &input, &out, now, force)?;
            print_out(json, &s, offline::seal_text)?;
        }
        Command::Envelope(EnvelopeCommand::Open {
            keys,
            from,
            signers,
            profile,
            input,
            attachments_dir,
            max_size,
            time,
        }) => {
            let now = time.now.unwrap_or_else(Timestamp::now);
            let limits = Limits {
                max_envelope: max_size,
                ..Limits::default()
            };
            let s = offline::open_file(
                &keys,
                &from,
                &signers,
                &profile,
                &input,
                attachments_dir.as_deref(),
                now,
                &limits,
            )?;
            print_out(json, &s, offline::open_text)?;
        }
        Command::Envelope(EnvelopeCommand::Inspect {
            input,
            age_body,
            force,
        }) => {
            let s = offline::inspect_file(&input, age_body.as_deref(), &Limits::default(), force)?;
            print_out(json, &s, offline::inspect_text)?;
        }
        Command::Store(StoreCommand::Rekey {
            config,
            new_master_key,
        }) => {
            let r = konvert_gateway::rekey::rekey(&config, &new_master_key)
                .map_err(|e| Failure::Other(e.to_string()))?;
            print_out(json, &r, konvert_gateway::rekey::rekeyed_text)?;
        }
        Command::Keys(KeysCommand::Rotate {
            config,
            keys_dir,
            tls,
            node,
            age,
            all,
            overlap,
        }) => {
            let kinds = if all {
                konvert_gateway::rotation::Kinds::ALL
            } else {
                konvert_gateway::rotation::Kinds { tls, node, age }
            };
            let now = Timestamp::now();
            let r = konvert_gateway::rotation::rotate(&config, keys_dir.as_deref(), kinds, overlap, now)?;
            print_out(json, &r, konvert_gateway::rotation::rotated_text)?;
        }
        Command::Keys(KeysCommand::Retire {
            config,
            keys_dir,
            force,
        }) => {
            let now = Timestamp::now();
            let r = konvert_gateway::rotation::retire(&config, keys_dir.as_deref(), now, force)?;
            print_out(json, &r, konvert_gateway::rotation::retired_text)?;
        }
        Command::Generate(g) => {
            use clap::CommandFactory;
            let (files, dir) = match g {
                GenerateCommand::Man { out } => {
                    (konvert_gateway::docgen::man_pages(Cli::command(), &out), out)
                }
                GenerateCommand::Completions { out } => (
                    konvert_gateway::docgen::completions(Cli::command(), "konvertctl", &out),
                    out,
                ),
            };
            let files =
                files.map_err(|e| Failure::Other(format!("cannot write into {}: {e}", dir.display())))?;
            print_out(json, &serde_json::json!({ "files": files }), |_| {
                files.iter().map(|f| format!("{}\n", f.display())).collect()
            })?;
        }
        Command::Authority(AuthorityCommand::Rename(a)) => send_authority_change(json, false, a)?,
        Command::Authority(AuthorityCommand::Replace(a)) => send_authority_change(json, true, a)?,
        command @ (Command::Send { .. }
        | Command::Authority(AuthorityCommand::List)
        | Command::Status { .. }
        | Command::Receipts(_)
        | Command::Inbox(_)
        | Command::Peers
        | Command::Requests(_)
        | Command::Health
        | Command::Audit(_)
        | Command::Story { .. }
        | Command::Retention(_)) => run_online(&cli.online, command)?,
    }
    Ok(())
}

/// `authority rename|replace`: signs the change offline with the root key,
/// then has konvertd send it to every peer.
fn send_authority_change(json: bool, replaced: bool, a: AuthorityChangeArgs) -> Result<(), Failure> {
    let args = signatories::AuthorityChangeArgs {
        replaced,
        old: a.old,
        new: a.new,
        name: a.name,
        name_en: a.name_en,
        effective: a.effective,
        note: a.note,
    };
    let (update, socket) =
        signatories::authority_change(&a.config, a.keys_dir.as_deref(), &args, Timestamp::now())?;
    let request = konvert_gateway::api::directory::ChangeRequest {
        update,
        signatory: a.signatory,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Other(format!("cannot start the async runtime: {e}")))?;
    let q = rt.block_on(Client::new(socket).directory_change(&request))?;
    print_out(json, &q, konvert_gateway::api::directory::queued_text)?;
    if q.peers.iter().any(|p| p.id.is_none()) {
        return Err(Failure::Other(
            "the change was not queued to every peer (see above); run the command again once fixed".into(),
        ));
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("konvertctl: error: {e}");
            ExitCode::from(1)
        }
    }
}
