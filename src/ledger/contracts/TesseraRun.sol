// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {ShareToken} from "./ShareToken.sol";

/// @title TesseraRun — one deployment serves one training run.
/// @notice Run registry (manifest hash + per-round commitments), validator allowlist with an M-of-N
///         quorum, share minting in proportion to verified scores, revenue (via ShareToken), and
///         share-weighted governance over key/value settings the swarm reads with `get(key)`.
///
/// Minting: `mintRound` takes a score report and >= threshold validator signatures (EIP-712, domain
/// binds chainId + this contract, so a signature set cannot be replayed on another chain or run).
/// Signers must be strictly ascending (no duplicates) registered validators; signatures must be low-s
/// (no malleated copies). Rounds mint in any order, each once (`RoundAlreadyMinted`), and at most
/// MAX_ROUND_AHEAD above the highest round minted so far (`RoundOutOfWindow`): a late round is
/// never orphaned by a later one, and no single report can jump the round numbers to 2^64.
///
/// Validator set: the deployment names the first allowlist; after that only a passed proposal with
/// key VALIDATORS_KEY (value = abi.encode(address[] validators, uint256 threshold), checked when
/// proposed) replaces it. The validators in office when such a proposal is made cannot vote on it,
/// and their shares are left out of its quorum base: the holders decide who signs mints, not the
/// signers. It passes with yes from at least half of that base (VALIDATOR_QUORUM_BPS) and yes > no.
///
/// Governance:
///  - voting power is the balance at the end of the proposal's creation block (ShareToken snapshots);
///    voting opens the block after. Shares minted or bought later carry no weight in it, and
///    nothing is locked: a voter may transfer at once (the shares' weight stays with the snapshot);
///  - the voting period is chosen by the proposer within [minVotingPeriod, maxVotingPeriod], fixed at
///    deployment; deadlines never decrease with the proposal id (a shorter one is raised to the
///    previous deadline), so proposals are settled in id order;
///  - a proposal passes iff yes >= quorumBps of the eligible supply at its snapshot and yes > no
///    (no votes never help the quorum);
///  - `execute(id)` settles every unsettled proposal up to id, in order. A passed proposal is applied
///    only within executionWindow after its deadline; later it is marked expired and changes nothing.
contract TesseraRun is ShareToken {
    bytes32 public constant REPORT_TYPEHASH = keccak256(
        "ScoreReport(bytes32 manifestHash,uint64 round,bytes32 weightsHash,bytes checkpointCid,bytes32 updatesRoot,bytes32 scoresRoot,address[] recipients,uint256[] scores)"
    );
    bytes32 private constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    uint256 private constant HALF_N = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0;
    /// A round may be at most this far above the highest minted round (2^32: ~340 years of 2.5 s
    /// rounds, so a long stretch of unminted rounds can never strand minting, while reaching 2^64
    /// would take 2^32 quorum-signed reports).
    uint256 public constant MAX_ROUND_AHEAD = 2 ** 32;
    /// Deployment bounds on the governance periods (any deployment: 1 s .. 365 days).
    uint256 private constant MAX_PERIOD = 365 days;
    uint256 public constant MAX_VALIDATORS = 128;
    /// A validator-set change needs yes from at least half the eligible supply (or quorumBps if
    /// higher): with the validators' shares out of the count, a lower bar would let a buyer of a
    /// fifth of the other holders' shares seat its own signers while those holders sleep.
    uint256 public constant VALIDATOR_QUORUM_BPS = 5000;

    struct Round {
        bytes32 weightsHash;
        bytes32 updatesRoot;
        bytes32 scoresRoot;
        uint256 minted;
        bytes checkpointCid;
    }

    struct Proposal {
        bytes32 key;
        address proposer;
        uint48 snapshot; // block: voting power = balances at its end
        uint32 epoch; // validator set in office at creation
        uint64 deadline;
        bool executed; // settled (applied, failed or expired)
        bool passed; // applied
        bool expired; // passed the vote but was settled after its execution window
        uint256 yes;
        uint256 no;
        bytes value;
    }

    /// What `getProposal` returns: the stored proposal plus its quorum base.
    struct ProposalView {
        bytes32 key;
        address proposer;
        uint64 snapshot;
        uint64 deadline;
        bool executed;
        bool passed;
        bool expired;
        uint256 yes;
        uint256 no;
        /// eligible supply at the snapshot (for a validator-set proposal: less the validators' shares)
        uint256 supplyAtStart;
        bytes value;
    }

    bytes32 public immutable manifestHash;
    uint256 public immutable sharesPerRound;
    uint256 public immutable quorumBps;
    uint64 public immutable minVotingPeriod;
    uint64 public immutable maxVotingPeriod;
    uint64 public immutable executionWindow;
    /// The block this run was deployed in: where a reader starts scanning its logs.
    uint256 public immutable deployBlock;
    uint256 public threshold;
    /// Setting key whose passed proposals replace the validator set ("validators", right-padded).
    bytes32 public constant VALIDATORS_KEY = bytes32("validators");

    /// Validator sets by epoch (the current one is `epoch`); old sets are kept for the exclusion rule.
    uint32 public epoch;
    mapping(uint32 => address[]) private validatorSets;
    mapping(uint32 => mapping(address => bool)) private inSet;

    /// The highest round minted so far (0 before any).
    uint64 public highestRound;
    mapping(uint64 => Round) private rounds;
    uint64[] private roundList;

    Proposal[] private proposals;
    /// Proposals [0, settled) are settled; execution goes in id order.
    uint256 public settled;
    mapping(uint256 => mapping(address => bool)) public hasVoted;
    mapping(bytes32 => bytes) private config;

    event RoundMinted(uint64 indexed round, bytes32 weightsHash, bytes32 updatesRoot, bytes32 scoresRoot, bytes checkpointCid, uint256 minted);
    event Proposed(uint256 indexed id, bytes32 indexed key, bytes value, uint64 deadline);
    event Voted(uint256 indexed id, address indexed voter, bool support, uint256 weight);
    event Executed(uint256 indexed id, bool passed);
    event Expired(uint256 indexed id);
    event ValidatorsChanged(address[] validators, uint256 threshold);

    error BadConfig();
    error RoundAlreadyMinted(uint64 round);
    error RoundOutOfWindow(uint64 round, uint256 ceiling);
    error LengthMismatch();
    error ZeroScores();
    error NothingMinted();
    error NotEnoughSignatures(uint256 got, uint256 needed);
    error BadSignature(uint256 index);
    error SignersNotAscending(uint256 index);
    error NotValidator(address signer);
    error NotShareholder();
    error NoVotingPower();
    error ValidatorCannotVote();
    error VotingPeriodOutOfBounds(uint256 duration, uint256 min, uint256 max);
    error UnknownProposal();
    error VotingNotStarted();
    error VotingClosed();
    error AlreadyVoted();
    error VotingOpen();
    error AlreadyExecuted();

    constructor(
        bytes32 manifestHash_, address[] memory validators_, uint256 threshold_, uint256 sharesPerRound_, uint256 quorumBps_,
        uint64 minVotingPeriod_, uint64 maxVotingPeriod_, uint64 executionWindow_
    ) {
        manifestHash = manifestHash_;
        if (quorumBps_ > 10_000 || sharesPerRound_ == 0 || sharesPerRound_ > type(uint208).max) revert BadConfig();
        if (minVotingPeriod_ == 0 || minVotingPeriod_ > maxVotingPeriod_ || maxVotingPeriod_ > MAX_PERIOD) revert BadConfig();
        if (executionWindow_ == 0 || executionWindow_ > MAX_PERIOD) revert BadConfig();
        sharesPerRound = sharesPerRound_;
        quorumBps = quorumBps_;
        minVotingPeriod = minVotingPeriod_;
        maxVotingPeriod = maxVotingPeriod_;
        executionWindow = executionWindow_;
        deployBlock = block.number;
        _setValidators(validators_, threshold_);
    }

    function _checkValidators(address[] memory vs, uint256 m) private pure {
        if (m == 0 || m > vs.length || vs.length > MAX_VALIDATORS) revert BadConfig();
        for (uint256 i = 0; i < vs.length; i++) {
            if (vs[i] == address(0)) revert BadConfig();
            for (uint256 j = 0; j < i; j++) if (vs[j] == vs[i]) revert BadConfig();
        }
    }

    function _setValidators(address[] memory vs, uint256 m) private {
        _checkValidators(vs, m);
        uint32 e = validatorSets[epoch].length == 0 ? epoch : epoch + 1;
        epoch = e;
        for (uint256 i = 0; i < vs.length; i++) {
            inSet[e][vs[i]] = true;
            validatorSets[e].push(vs[i]);
        }
        threshold = m;
        emit ValidatorsChanged(vs, m);
    }

    // ---------------------------------------------------------------- registry + minting

    function domainSeparator() public view returns (bytes32) {
        return keccak256(abi.encode(DOMAIN_TYPEHASH, keccak256("Tessera"), keccak256("1"), block.chainid, address(this)));
    }

    function reportDigest(
        uint64 round, bytes32 weightsHash, bytes calldata checkpointCid, bytes32 updatesRoot, bytes32 scoresRoot,
        address[] calldata recipients, uint256[] calldata scores
    ) public view returns (bytes32) {
        bytes32 structHash = keccak256(abi.encode(
            REPORT_TYPEHASH, manifestHash, round, weightsHash, keccak256(checkpointCid), updatesRoot, scoresRoot,
            keccak256(abi.encodePacked(recipients)), keccak256(abi.encodePacked(scores))
        ));
        return keccak256(abi.encodePacked("\x19\x01", domainSeparator(), structHash));
    }

    /// The highest round number that may be minted now.
    function roundCeiling() public view returns (uint256) {
        return uint256(highestRound) + MAX_ROUND_AHEAD;
    }

    function mintRound(
        uint64 round, bytes32 weightsHash, bytes calldata checkpointCid, bytes32 updatesRoot, bytes32 scoresRoot,
        address[] calldata recipients, uint256[] calldata scores, bytes[] calldata signatures
    ) external returns (uint256 minted) {
        if (rounds[round].minted != 0) revert RoundAlreadyMinted(round);
        if (round > roundCeiling()) revert RoundOutOfWindow(round, roundCeiling());
        if (recipients.length != scores.length) revert LengthMismatch();
        if (signatures.length < threshold) revert NotEnoughSignatures(signatures.length, threshold);
        bytes32 digest = reportDigest(round, weightsHash, checkpointCid, updatesRoot, scoresRoot, recipients, scores);
        address prev = address(0);
        mapping(address => bool) storage current = inSet[epoch];
        for (uint256 i = 0; i < signatures.length; i++) {
            address s = _recover(digest, signatures[i], i);
            if (s <= prev) revert SignersNotAscending(i);
            if (!current[s]) revert NotValidator(s);
            prev = s;
        }
        uint256 total = 0;
        for (uint256 i = 0; i < scores.length; i++) total += scores[i];
        if (total == 0) revert ZeroScores();
        for (uint256 i = 0; i < recipients.length; i++) {
            uint256 amt = (sharesPerRound * scores[i]) / total; // floor; remainder is not minted
            if (amt > 0) { _mintTo(recipients[i], amt); minted += amt; }
        }
        if (minted == 0) revert NothingMinted(); // minted != 0 is what marks a round as minted
        _addSupply(minted);
        if (round > highestRound) highestRound = round;
        rounds[round] = Round(weightsHash, updatesRoot, scoresRoot, minted, checkpointCid);
        roundList.push(round);
        emit RoundMinted(round, weightsHash, updatesRoot, scoresRoot, checkpointCid, minted);
    }

    function _recover(bytes32 digest, bytes calldata sig, uint256 i) private pure returns (address) {
        if (sig.length != 65) revert BadSignature(i);
        bytes32 r = bytes32(sig[0:32]);
        bytes32 s = bytes32(sig[32:64]);
        uint8 v = uint8(sig[64]);
        if (v < 27) v += 27;
        if ((v != 27 && v != 28) || uint256(s) > HALF_N) revert BadSignature(i);
        address a = ecrecover(digest, v, r, s);
        if (a == address(0)) revert BadSignature(i);
        return a;
    }

    function getRound(uint64 round) external view returns (Round memory) { return rounds[round]; }
    function roundCount() external view returns (uint256) { return roundList.length; }
    function roundAt(uint256 i) external view returns (uint64) { return roundList[i]; }
    function validators() external view returns (address[] memory) { return validatorSets[epoch]; }
    function isValidator(address a) external view returns (bool) { return inSet[epoch][a]; }
    function isMinted(uint64 round) external view returns (bool) { return rounds[round].minted != 0; }

    // ---------------------------------------------------------------- governance

    function propose(bytes32 key, bytes calldata value, uint64 duration) external returns (uint256 id) {
        if (balanceOf(msg.sender) == 0) revert NotShareholder();
        if (duration < minVotingPeriod || duration > maxVotingPeriod)
            revert VotingPeriodOutOfBounds(duration, minVotingPeriod, maxVotingPeriod);
        if (key == VALIDATORS_KEY) {
            (address[] memory vs, uint256 m) = abi.decode(value, (address[], uint256));
            _checkValidators(vs, m);
        }
        id = proposals.length;
        uint64 deadline = uint64(block.timestamp) + duration;
        if (id > 0 && proposals[id - 1].deadline > deadline) deadline = proposals[id - 1].deadline;
        uint48 snap = _snapshot();
        proposals.push(Proposal(key, msg.sender, snap, epoch, deadline, false, false, false, 0, 0, value));
        emit Proposed(id, key, value, deadline);
    }

    /// Voting power of `a` in proposal `id`: its balance at the end of the snapshot block (0 for a
    /// validator in office at creation, on a validator-set proposal).
    function votingPower(uint256 id, address a) public view returns (uint256) {
        if (id >= proposals.length) revert UnknownProposal();
        Proposal storage p = proposals[id];
        if (p.key == VALIDATORS_KEY && inSet[p.epoch][a]) return 0;
        return _balanceAt(a, p.snapshot);
    }

    function vote(uint256 id, bool support) external {
        if (id >= proposals.length) revert UnknownProposal();
        Proposal storage p = proposals[id];
        if (block.number <= p.snapshot) revert VotingNotStarted();
        if (block.timestamp >= p.deadline) revert VotingClosed();
        if (hasVoted[id][msg.sender]) revert AlreadyVoted();
        if (p.key == VALIDATORS_KEY && inSet[p.epoch][msg.sender]) revert ValidatorCannotVote();
        uint256 w = _balanceAt(msg.sender, p.snapshot);
        if (w == 0) revert NoVotingPower();
        hasVoted[id][msg.sender] = true;
        if (support) p.yes += w; else p.no += w;
        emit Voted(id, msg.sender, support, w);
    }

    /// Supply the quorum is measured on: the supply at the snapshot, less (for a validator-set
    /// proposal) what the validators in office at creation held then.
    function _eligibleSupply(Proposal storage p) private view returns (uint256 s) {
        s = _supplyAt(p.snapshot);
        if (p.key == VALIDATORS_KEY) {
            address[] storage vs = validatorSets[p.epoch];
            for (uint256 i = 0; i < vs.length; i++) s -= _balanceAt(vs[i], p.snapshot);
        }
    }

    /// Settle proposals in id order up to `id` (each after its deadline); returns whether `id` was applied.
    function execute(uint256 id) external returns (bool passed) {
        if (id >= proposals.length) revert UnknownProposal();
        if (id < settled) revert AlreadyExecuted();
        if (block.timestamp < proposals[id].deadline) revert VotingOpen(); // deadlines are monotone in id
        for (uint256 n = settled; n <= id; n++) passed = _settle(n);
        settled = id + 1;
    }

    function _settle(uint256 n) private returns (bool passed) {
        Proposal storage p = proposals[n];
        p.executed = true;
        uint256 q = p.key == VALIDATORS_KEY && quorumBps < VALIDATOR_QUORUM_BPS ? VALIDATOR_QUORUM_BPS : quorumBps;
        passed = p.yes * 10_000 >= _eligibleSupply(p) * q && p.yes > p.no;
        if (passed && block.timestamp > uint256(p.deadline) + executionWindow) {
            p.expired = true;
            emit Expired(n);
            passed = false;
        }
        p.passed = passed;
        if (passed) {
            config[p.key] = p.value;
            if (p.key == VALIDATORS_KEY) {
                (address[] memory vs, uint256 m) = abi.decode(p.value, (address[], uint256));
                _setValidators(vs, m);
            }
        }
        emit Executed(n, passed);
    }

    function getProposal(uint256 id) external view returns (ProposalView memory v) {
        if (id >= proposals.length) revert UnknownProposal();
        Proposal storage p = proposals[id];
        v = ProposalView(p.key, p.proposer, p.snapshot, p.deadline, p.executed, p.passed, p.expired, p.yes, p.no, _eligibleSupply(p), p.value);
    }
    function proposalCount() external view returns (uint256) { return proposals.length; }
    function get(bytes32 key) external view returns (bytes memory) { return config[key]; }
}
