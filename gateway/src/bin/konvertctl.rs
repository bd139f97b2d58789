//! `konvertctl`: the operator and integrator command line of Konvert.
//! Argument handling only; the work is in `konvert_gateway`.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use konvert_envelope::envelope::Limits;
use konvert_envelope::model::{AuthorityId, Timestamp};
use konvert_gateway::offline;

/// Konvert: secure message gateway for migration data exchanged under bilateral agreements.
#[derive(Debug, Parser)]
#[command(
    name = "konvertctl",
    version,
    about = "Konvert: secure message gateway for migration data exchanged under bilateral agreements",
    propagate_version = true,
    after_help = "Examples:\n  konvertctl demo                                   # see three gateways exchange messages\n  \
        konvertctl keygen --authority kz.mvd --dir kz/    # keys and card for a gateway\n  \
        konvertctl envelope seal --help                   # seal a message into an envelope\n\n\
        Exit status: 0 on success, 1 when the command failed (one line on stderr says why),\n\
        2 when the arguments are wrong."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Play a short exchange between three gateways (kz.mvd, by.mvd, am.police) on fresh keys.
    #[command(
        after_help = "Example:\n  konvertctl demo\n  konvertctl demo --keep /tmp/konvert-demo   # keep keys, envelopes and receipts\n\n\
        Runs a request, a clarification, an answer, a partial refusal with grounds and unsolicited\n\
        information through seal and open, with signed receipts, and prints the timeline."
    )]
    Demo {
        /// Keep the keys, messages, envelopes and receipts in this (new or empty) directory.
        #[arg(long, value_name = "DIR")]
        keep: Option<PathBuf>,
    },
    /// Create a gateway directory: keys (node, age, TLS, store master key), a signatory, profiles, konvert.toml and the public card.
    #[command(
        after_help = "Example:\n  konvertctl init --authority kz.mvd --dir /etc/konvert --listen 0.0.0.0:7443\n\n\
        Then give DIR/card.toml to each peer, and add theirs with `konvertctl peer add`."
    )]
    Init {
        /// Authority id, for example kz.mvd.
        #[arg(long)]
        authority: AuthorityId,
        /// Directory to create (must not hold a konvert.toml yet).
        #[arg(long)]
        dir: PathBuf,
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
    #[command(subcommand)]
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
    #[command(subcommand)]
    Signatory(SignatoryCommand),
    /// Seal, open and inspect envelope files offline.
    #[command(subcommand)]
    Envelope(EnvelopeCommand),
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

fn run(cli: Cli) -> Result<(), offline::Error> {
    match cli.command {
        Command::Demo { keep } => {
            let kept = keep.is_some();
            let (dir, _guard) = konvert_gateway::demo::workdir(keep)?;
            print!("{}", konvert_gateway::demo::run(&dir, Timestamp::now())?);
            if kept {
                println!(
                    "\nKept in {}: per-authority key directories, messages/, envelopes/, receipts/.",
                    dir.display()
                );
                println!(
                    "Try: konvertctl envelope inspect --in {}/envelopes/01-kz.mvd-to-by.mvd.env",
                    dir.display()
                );
            } else {
                println!("\nNothing was left behind (use --keep DIR to keep the files).");
            }
        }
        Command::Init {
            authority,
            dir,
            listen,
            api_socket,
            name,
            signatory,
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
            println!("created {}", r.config.display());
            println!("  public card (give to peers): {}", r.card.display());
            if let Some(pin) = &r.card_value.tls_pin {
                println!("  TLS pin: {pin}");
            }
        }
        Command::Peer(PeerCommand::Add {
            config,
            card,
            addresses,
            agreements,
        }) => {
            let c = konvert_gateway::init::peer_add(&config, &card, &addresses, &agreements)?;
            println!("added peer {} to {}", c.authority, config.display());
        }
        Command::Keygen {
            authority,
            dir,
            name,
            force,
        } => {
            let card = offline::keygen(&authority, &dir, name, force)?;
            println!("created node keys for {} in {}", card.authority, dir.display());
            println!("  node key id: {}", card.node_key.key_id());
            println!("  age recipient: {}", card.age_recipients[0]);
            println!(
                "  card (give to peers): {}",
                dir.join(offline::CARD_FILE).display()
            );
        }
        Command::Signatory(SignatoryCommand::Keygen { out, force }) => {
            let key = offline::signatory_keygen(&out, force)?;
            println!(
                "created signatory key {} (key id {})",
                out.display(),
                key.key_id()
            );
            println!("  public key: {}", offline::pub_path(&out).display());
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
            print_json(&s)?;
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
            print_json(&s)?;
        }
        Command::Envelope(EnvelopeCommand::Inspect {
            input,
            age_body,
            force,
        }) => {
            let s = offline::inspect_file(&input, age_body.as_deref(), &Limits::default(), force)?;
            print_json(&s)?;
        }
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
