//! Chain access for `exact` on EVM: token reads and settlement by `transferWithAuthorization`,
//! sent from tollgate's own settler account over JSON-RPC (HTTP).
//!
//! The settler account's transaction nonce is managed locally: seeded from the pending nonce,
//! assigned under an async mutex together with signing and sending (so transactions reach the
//! node in nonce order and a failed send never leaves a gap), and resynced from the node when it
//! reports a nonce error. Many concurrent settlements from one key therefore all go through.

use std::time::Duration;

use alloy::eips::Encodable2718;
use alloy::network::{EthereumWallet, NetworkTransactionBuilder, TransactionBuilder};
use alloy::primitives::{Address, Bytes, B256, U256};
use alloy::providers::{Provider, RootProvider};
use alloy::rpc::client::RpcClient;
use alloy::rpc::types::{TransactionReceipt, TransactionRequest};
use alloy::signers::local::PrivateKeySigner;
use alloy::sol;
use alloy::sol_types::{SolCall, SolEvent};
use alloy::transports::http::Http;
use alloy::transports::{RpcError, TransportErrorKind};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::network::Network;
use crate::reason::Reason;
use crate::settle::{SettleFailure, SettleOutcome};
use crate::verify::{PayerSignature, VerifiedPayment};

sol! {
    /// The parts of an EIP-3009 token (USDC's FiatTokenV2_2) that settlement uses.
    #[allow(missing_docs)]
    interface IEip3009Token {
        function balanceOf(address account) external view returns (uint256);
        function authorizationState(address authorizer, bytes32 nonce) external view returns (bool);
        function transferWithAuthorization(
            address from, address to, uint256 value, uint256 validAfter, uint256 validBefore,
            bytes32 nonce, uint8 v, bytes32 r, bytes32 s) external;
        event Transfer(address indexed from, address indexed to, uint256 value);
    }

    /// The `bytes signature` overload (FiatTokenV2_2), needed for contract-wallet signatures.
    #[allow(missing_docs)]
    interface IEip3009BytesSignature {
        function transferWithAuthorization(
            address from, address to, uint256 value, uint256 validAfter, uint256 validBefore,
            bytes32 nonce, bytes signature) external;
    }

    /// ERC-1271.
    #[allow(missing_docs)]
    interface IERC1271 {
        function isValidSignature(bytes32 hash, bytes signature) external view returns (bytes4);
    }
}

/// `IERC1271.isValidSignature.selector`, what a wallet returns for a valid signature.
const ERC1271_MAGIC: [u8; 4] = [0x16, 0x26, 0xba, 0x7e];

/// Chain access configuration (embeddable in the gateway config).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainConfig {
    /// CAIP-2 network served by this RPC endpoint (`eip155:N`).
    pub network: String,
    /// JSON-RPC HTTP(S) URL.
    pub rpc_url: String,
    /// Name of the environment variable holding the settler's private key (0x-hex).
    pub settler_key_env: String,
    /// How long to wait for a settlement receipt before answering `Pending`.
    #[serde(default = "default_receipt_timeout_ms")]
    pub receipt_timeout_ms: u64,
    /// Timeout of each JSON-RPC request.
    #[serde(default = "default_rpc_timeout_ms")]
    pub rpc_timeout_ms: u64,
    /// Longest pause between two receipt polls (the first pauses are shorter: see
    /// [`FIRST_RECEIPT_PAUSE`]).
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
}

/// The first pause between receipt polls; each later one doubles, up to
/// [`ChainConfig::poll_interval_ms`].
pub const FIRST_RECEIPT_PAUSE: Duration = Duration::from_millis(5);

fn default_receipt_timeout_ms() -> u64 {
    30_000
}
fn default_rpc_timeout_ms() -> u64 {
    10_000
}
fn default_poll_interval_ms() -> u64 {
    250
}

/// Chain access failures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// Bad configuration (URL, network, key).
    #[error("chain config: {0}")]
    Config(String),
    /// The RPC endpoint cannot be reached (connection, timeout, HTTP error).
    #[error("RPC provider unavailable: {0}")]
    ProviderUnavailable(String),
    /// The node answered with an error or an unreadable result.
    #[error("RPC error: {0}")]
    Rpc(String),
    /// The RPC endpoint serves another chain than configured.
    #[error("RPC endpoint is on chain {got}, configured for {expected}")]
    WrongChain {
        /// Configured chain id.
        expected: u64,
        /// Reported chain id.
        got: u64,
    },
    /// The payer's balance is below the payment.
    #[error("payer balance {balance} is below {required}")]
    InsufficientFunds {
        /// Balance.
        balance: U256,
        /// Payment value.
        required: U256,
    },
    /// The authorization's nonce was already used or canceled on chain.
    #[error("authorization nonce already used on chain")]
    NonceAlreadyUsed,
    /// Simulating the settlement reverted (nothing was sent).
    #[error("settlement simulation reverted: {0}")]
    SimulationFailed(String),
    /// Signing the settlement transaction failed.
    #[error("signing settlement transaction: {0}")]
    Signing(String),
    /// The settlement transaction was mined but reverted.
    #[error("settlement transaction {tx} reverted")]
    Reverted {
        /// Transaction hash.
        tx: B256,
    },
    /// The transaction succeeded but carries no matching `Transfer` event.
    #[error("settlement transaction {tx} has no matching Transfer event")]
    MissingTransferEvent {
        /// Transaction hash.
        tx: B256,
    },
}

impl ChainError {
    /// Stable reason.
    pub fn reason(&self) -> Reason {
        match self {
            Self::ProviderUnavailable(_) => Reason::ProviderUnavailable,
            Self::InsufficientFunds { .. } => Reason::InsufficientFunds,
            Self::NonceAlreadyUsed => Reason::NonceAlreadyUsed,
            // Our side: the payer can do nothing about these.
            Self::Config(_) | Self::Rpc(_) | Self::WrongChain { .. } | Self::Signing(_) => {
                Reason::SettlementUnavailable
            }
            Self::SimulationFailed(_)
            | Self::Reverted { .. }
            | Self::MissingTransferEvent { .. } => Reason::SettlementFailed,
        }
    }

    /// True when nothing reached the chain and trying the same payment again may succeed.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            Self::ProviderUnavailable(_) | Self::Rpc(_) | Self::Signing(_) | Self::Config(_)
        )
    }
}

impl From<ChainError> for SettleFailure {
    fn from(e: ChainError) -> Self {
        SettleFailure {
            reason: e.reason(),
            retryable: e.retryable(),
            detail: e.to_string(),
        }
    }
}

fn rpc_error(e: RpcError<TransportErrorKind>) -> ChainError {
    match e {
        RpcError::Transport(k) => ChainError::ProviderUnavailable(k.to_string()),
        other => ChainError::Rpc(other.to_string()),
    }
}

/// An EVM chain reached over JSON-RPC, with a settler account.
pub struct EvmChain {
    provider: RootProvider,
    network: Network,
    chain_id: u64,
    wallet: EthereumWallet,
    settler: Address,
    // The next nonce to use, `None` until seeded from (or resynced with) the node.
    next_nonce: Mutex<Option<u64>>,
    receipt_timeout: Duration,
    poll_interval: Duration,
}

impl std::fmt::Debug for EvmChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EvmChain")
            .field("network", &self.network)
            .field("settler", &self.settler)
            .finish_non_exhaustive()
    }
}

impl EvmChain {
    /// Builds the client from config, reading the settler key from the named env variable.
    /// Does not contact the node (see [`EvmChain::check_chain_id`]).
    pub fn from_config(cfg: &ChainConfig) -> Result<Self, ChainError> {
        let key = std::env::var(&cfg.settler_key_env).map_err(|_| {
            ChainError::Config(format!(
                "settler_key_env: environment variable {} is not set",
                cfg.settler_key_env
            ))
        })?;
        let signer: PrivateKeySigner = key.trim().parse().map_err(|_| {
            ChainError::Config(format!(
                "settler_key_env: {} does not hold a valid private key",
                cfg.settler_key_env
            ))
        })?;
        Self::with_signer(cfg, signer)
    }

    /// Builds the client with an explicit settler key.
    pub fn with_signer(cfg: &ChainConfig, signer: PrivateKeySigner) -> Result<Self, ChainError> {
        let network = Network::parse(&cfg.network)
            .filter(|n| n.eip155_chain_id().is_some())
            .ok_or_else(|| {
                ChainError::Config(format!("network: {:?} is not eip155:N", cfg.network))
            })?;
        let chain_id = network.eip155_chain_id().unwrap_or_default();
        let url: reqwest::Url = cfg
            .rpc_url
            .parse()
            .map_err(|e| ChainError::Config(format!("rpc_url: {e}")))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(cfg.rpc_timeout_ms))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| ChainError::Config(format!("http client: {e}")))?;
        let is_local = url
            .host_str()
            .is_some_and(|h| h == "localhost" || h.starts_with("127.") || h == "[::1]");
        let client = RpcClient::new(Http::with_client(http, url), is_local);
        let settler = signer.address();
        Ok(Self {
            provider: RootProvider::new(client),
            network,
            chain_id,
            wallet: EthereumWallet::from(signer),
            settler,
            next_nonce: Mutex::new(None),
            receipt_timeout: Duration::from_millis(cfg.receipt_timeout_ms),
            poll_interval: Duration::from_millis(cfg.poll_interval_ms.max(1)),
        })
    }

    /// The settler account's address (it pays gas and must hold native currency).
    pub fn settler_address(&self) -> Address {
        self.settler
    }

    /// The network served.
    pub fn network(&self) -> &Network {
        &self.network
    }

    /// Checks the node serves the configured chain (call at startup).
    pub async fn check_chain_id(&self) -> Result<(), ChainError> {
        let got = self.provider.get_chain_id().await.map_err(rpc_error)?;
        if got != self.chain_id {
            return Err(ChainError::WrongChain {
                expected: self.chain_id,
                got,
            });
        }
        Ok(())
    }

    async fn call_view(&self, asset: Address, input: Vec<u8>) -> Result<Bytes, ChainError> {
        let tx = TransactionRequest::default()
            .with_to(asset)
            .with_input(input);
        self.provider.call(tx).await.map_err(rpc_error)
    }

    /// `balanceOf(owner)` on `asset`.
    pub async fn balance_of(&self, asset: Address, owner: Address) -> Result<U256, ChainError> {
        let out = self
            .call_view(
                asset,
                IEip3009Token::balanceOfCall { account: owner }.abi_encode(),
            )
            .await?;
        IEip3009Token::balanceOfCall::abi_decode_returns(&out)
            .map_err(|e| ChainError::Rpc(format!("balanceOf returned garbage: {e}")))
    }

    /// `authorizationState(authorizer, nonce)` on `asset`: true if used or canceled.
    pub async fn authorization_used(
        &self,
        asset: Address,
        authorizer: Address,
        nonce: B256,
    ) -> Result<bool, ChainError> {
        let input = IEip3009Token::authorizationStateCall { authorizer, nonce }.abi_encode();
        let out = self.call_view(asset, input).await?;
        IEip3009Token::authorizationStateCall::abi_decode_returns(&out)
            .map_err(|e| ChainError::Rpc(format!("authorizationState returned garbage: {e}")))
    }

    /// ERC-1271: whether the contract wallet `wallet` accepts `signature` over `digest`.
    /// An address without code is not a contract wallet (false).
    pub async fn is_valid_contract_signature(
        &self,
        wallet: Address,
        digest: B256,
        signature: &Bytes,
    ) -> Result<bool, ChainError> {
        let code = self.provider.get_code_at(wallet).await.map_err(rpc_error)?;
        if code.is_empty() {
            return Ok(false);
        }
        let input = IERC1271::isValidSignatureCall {
            hash: digest,
            signature: signature.clone(),
        }
        .abi_encode();
        let tx = TransactionRequest::default()
            .with_to(wallet)
            .with_input(input);
        match self.provider.call(tx).await {
            Ok(out) => Ok(out.len() >= 4 && out[..4] == ERC1271_MAGIC),
            // A wallet that reverts rejects the signature.
            Err(RpcError::ErrorResp(_)) => Ok(false),
            Err(e) => Err(rpc_error(e)),
        }
    }

    /// The on-chain half of verification: nonce unused and balance sufficient (both read
    /// concurrently).
    pub async fn check_payable(&self, p: &VerifiedPayment) -> Result<(), ChainError> {
        let (used, balance) = tokio::join!(
            self.authorization_used(p.asset, p.payer, p.nonce),
            self.balance_of(p.asset, p.payer)
        );
        if used? {
            return Err(ChainError::NonceAlreadyUsed);
        }
        let balance = balance?;
        if balance < p.value {
            return Err(ChainError::InsufficientFunds {
                balance,
                required: p.value,
            });
        }
        Ok(())
    }

    /// Settles a verified payment: on-chain checks, simulation (gas estimate), send, and wait for
    /// the receipt (checking status and the `Transfer` event). A receipt not seen within the
    /// receipt timeout gives `Pending`.
    pub async fn settle(&self, p: &VerifiedPayment) -> Result<SettleOutcome, ChainError> {
        self.check_payable(p).await?;
        let input = match &p.signature {
            PayerSignature::Ecdsa(sig) => IEip3009Token::transferWithAuthorizationCall {
                from: p.payer,
                to: p.pay_to,
                value: p.value,
                validAfter: p.valid_after,
                validBefore: p.valid_before,
                nonce: p.nonce,
                v: 27 + u8::from(sig.v()),
                r: sig.r().into(),
                s: sig.s().into(),
            }
            .abi_encode(),
            PayerSignature::Contract(bytes) => {
                IEip3009BytesSignature::transferWithAuthorizationCall {
                    from: p.payer,
                    to: p.pay_to,
                    value: p.value,
                    validAfter: p.valid_after,
                    validBefore: p.valid_before,
                    nonce: p.nonce,
                    signature: bytes.clone(),
                }
                .abi_encode()
            }
        };
        let base = TransactionRequest::default()
            .with_from(self.settler)
            .with_to(p.asset)
            .with_input(input)
            .with_chain_id(self.chain_id);
        let (gas, fees) = tokio::join!(
            self.provider.estimate_gas(base.clone()),
            self.provider.estimate_eip1559_fees()
        );
        let gas = gas.map_err(|e| match e {
            RpcError::ErrorResp(payload) => {
                ChainError::SimulationFailed(payload.message.to_string())
            }
            other => rpc_error(other),
        })?;
        let fees = fees.map_err(rpc_error)?;
        let tx = base
            .with_gas_limit(gas.saturating_add(gas / 5))
            .with_max_fee_per_gas(fees.max_fee_per_gas)
            .with_max_priority_fee_per_gas(fees.max_priority_fee_per_gas);
        let hash = self.send_with_managed_nonce(tx).await?;
        match self.wait_receipt(hash).await? {
            None => Ok(SettleOutcome::Pending {
                tx: hash.to_string(),
            }),
            Some(receipt) => {
                check_receipt(&receipt, p)?;
                Ok(SettleOutcome::Settled {
                    tx: hash.to_string(),
                })
            }
        }
    }

    /// Looks up the outcome of an earlier settlement transaction (e.g. one that came back
    /// `Pending`): `None` while it is not mined, otherwise `Settled` or the failure. A
    /// reconciliation job moves the stored payment from `Pending` with this.
    pub async fn settlement_status(
        &self,
        tx: B256,
        p: &VerifiedPayment,
    ) -> Result<Option<SettleOutcome>, ChainError> {
        let receipt = self
            .provider
            .get_transaction_receipt(tx)
            .await
            .map_err(rpc_error)?;
        match receipt {
            None => Ok(None),
            Some(r) => {
                check_receipt(&r, p)?;
                Ok(Some(SettleOutcome::Settled { tx: tx.to_string() }))
            }
        }
    }

    /// Assigns the next nonce, signs and sends — all under the nonce lock, so nonces reach the
    /// node in order and are only consumed by transactions the node accepted.
    async fn send_with_managed_nonce(&self, tx: TransactionRequest) -> Result<B256, ChainError> {
        let mut next = self.next_nonce.lock().await;
        for attempt in 0..3 {
            let nonce = match *next {
                Some(n) => n,
                None => self.pending_nonce().await?,
            };
            let envelope = tx
                .clone()
                .with_nonce(nonce)
                .build(&self.wallet)
                .await
                .map_err(|e| ChainError::Signing(e.to_string()))?;
            let hash = *envelope.tx_hash();
            let raw = envelope.encoded_2718();
            match self.provider.send_raw_transaction(&raw).await {
                Ok(_) => {
                    *next = Some(nonce + 1);
                    return Ok(hash);
                }
                Err(RpcError::ErrorResp(payload)) => {
                    let msg = payload.message.to_ascii_lowercase();
                    if msg.contains("already known") {
                        *next = Some(nonce + 1);
                        return Ok(hash);
                    }
                    let nonce_problem = msg.contains("nonce")
                        || msg.contains("replacement transaction underpriced");
                    if nonce_problem && attempt < 2 {
                        tracing::warn!(nonce, error = %payload.message, "settler nonce resync");
                        *next = None;
                        continue;
                    }
                    return Err(ChainError::Rpc(payload.message.to_string()));
                }
                Err(e) => {
                    // The node may or may not have the transaction: resync before the next send.
                    *next = None;
                    return Err(rpc_error(e));
                }
            }
        }
        Err(ChainError::Rpc("settler nonce kept changing".to_owned()))
    }

    async fn pending_nonce(&self) -> Result<u64, ChainError> {
        self.provider
            .get_transaction_count(self.settler)
            .pending()
            .await
            .map_err(rpc_error)
    }

    /// Polls for the receipt of `hash` until the receipt timeout. The pauses between polls start
    /// at [`FIRST_RECEIPT_PAUSE`] and double up to the configured poll interval: a receipt that
    /// is there within milliseconds of the send (a fast chain, a local node) is seen then, not a
    /// whole interval later, at the cost of a handful of extra polls on a slow chain.
    async fn wait_receipt(&self, hash: B256) -> Result<Option<TransactionReceipt>, ChainError> {
        let deadline = tokio::time::Instant::now() + self.receipt_timeout;
        let mut pause = FIRST_RECEIPT_PAUSE.min(self.poll_interval);
        loop {
            match self.provider.get_transaction_receipt(hash).await {
                Ok(Some(r)) => return Ok(Some(r)),
                Ok(None) => {}
                // The transaction is out; a flaky RPC while waiting means "pending", not failure.
                Err(e) => tracing::warn!(tx = %hash, error = %e, "receipt poll failed"),
            }
            if tokio::time::Instant::now() + pause > deadline {
                return Ok(None);
            }
            tokio::time::sleep(pause).await;
            pause = pause.saturating_mul(2).min(self.poll_interval);
        }
    }
}

fn check_receipt(receipt: &TransactionReceipt, p: &VerifiedPayment) -> Result<(), ChainError> {
    let tx = receipt.transaction_hash;
    if !receipt.status() {
        return Err(ChainError::Reverted { tx });
    }
    let transferred = receipt.logs().iter().any(|log| {
        log.inner.address == p.asset
            && IEip3009Token::Transfer::decode_log(&log.inner).is_ok_and(|ev| {
                ev.data.from == p.payer && ev.data.to == p.pay_to && ev.data.value == p.value
            })
    });
    if transferred {
        Ok(())
    } else {
        Err(ChainError::MissingTransferEvent { tx })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(url: &str) -> ChainConfig {
        ChainConfig {
            network: "eip155:31337".into(),
            rpc_url: url.into(),
            settler_key_env: "TOLLGATE_TEST_NO_SUCH_VAR".into(),
            receipt_timeout_ms: 1000,
            rpc_timeout_ms: 1000,
            poll_interval_ms: 50,
        }
    }

    #[test]
    fn config_errors_name_the_field() {
        let e = EvmChain::from_config(&cfg("http://127.0.0.1:1")).unwrap_err();
        assert!(e.to_string().contains("settler_key_env"), "{e}");
        let signer = PrivateKeySigner::random();
        let mut c = cfg("not a url");
        assert!(EvmChain::with_signer(&c, signer.clone())
            .unwrap_err()
            .to_string()
            .contains("rpc_url"));
        c.rpc_url = "http://127.0.0.1:1".into();
        c.network = "solana:abc".into();
        assert!(EvmChain::with_signer(&c, signer)
            .unwrap_err()
            .to_string()
            .contains("network"));
        let parsed: Result<ChainConfig, _> = serde_json::from_value(serde_json::json!({
            "network": "eip155:1", "rpc_url": "http://x", "settler_key_env": "K", "bogus": 1
        }));
        assert!(parsed.is_err());
    }

    #[tokio::test]
    async fn unreachable_rpc_is_provider_unavailable() {
        // Port 1 on loopback: connection refused.
        let chain =
            EvmChain::with_signer(&cfg("http://127.0.0.1:1"), PrivateKeySigner::random()).unwrap();
        let e = chain
            .balance_of(Address::ZERO, Address::ZERO)
            .await
            .unwrap_err();
        assert!(matches!(e, ChainError::ProviderUnavailable(_)), "{e:?}");
        assert_eq!(e.reason(), Reason::ProviderUnavailable);
        assert!(e.retryable());
    }
}
