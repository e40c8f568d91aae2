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
/// Signers must be strictly ascending (no duplicates) registered validators; each round mints once
/// and rounds are strictly increasing (no replay). Signatures must be low-s (no malleated copies).
///
/// Validator set: the deployment names the first allowlist; after that only a passed proposal with
/// key VALIDATORS_KEY (value = abi.encode(address[] validators, uint256 threshold), checked when
/// proposed) replaces it. No single party, the deployer included, can change who signs mints.
///
/// Governance snapshot choice: voting *locks* the voter's shares until the proposal deadline
/// (transfers out revert). A voter therefore cannot vote, transfer, and vote again from another
/// address. Shares minted to a new holder during a vote can vote (they are earned by verified work);
/// quorum is measured against the supply recorded at proposal time.
contract TesseraRun is ShareToken {
    bytes32 public constant REPORT_TYPEHASH = keccak256(
        "ScoreReport(bytes32 manifestHash,uint64 round,bytes32 weightsHash,bytes checkpointCid,bytes32 updatesRoot,bytes32 scoresRoot,address[] recipients,uint256[] scores)"
    );
    bytes32 private constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    uint256 private constant HALF_N = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0;

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
        uint64 deadline;
        bool executed;
        bool passed;
        uint256 yes;
        uint256 no;
        uint256 supplyAtStart;
        bytes value;
    }

    bytes32 public immutable manifestHash;
    uint256 public immutable sharesPerRound;
    uint256 public immutable quorumBps;
    /// The block this run was deployed in: where a reader starts scanning its logs.
    uint256 public immutable deployBlock;
    uint256 public threshold;
    /// Setting key whose passed proposals replace the validator set ("validators", right-padded).
    bytes32 public constant VALIDATORS_KEY = bytes32("validators");

    address[] private validatorList;
    mapping(address => bool) public isValidator;

    uint64 public lastRound;
    bool public anyRound;
    mapping(uint64 => Round) private rounds;
    uint64[] private roundList;

    Proposal[] private proposals;
    mapping(uint256 => mapping(address => bool)) public hasVoted;
    mapping(address => uint256) public lockedUntil;
    mapping(bytes32 => bytes) private config;

    event RoundMinted(uint64 indexed round, bytes32 weightsHash, bytes32 updatesRoot, bytes32 scoresRoot, bytes checkpointCid, uint256 minted);
    event Proposed(uint256 indexed id, bytes32 indexed key, bytes value, uint64 deadline);
    event Voted(uint256 indexed id, address indexed voter, bool support, uint256 weight);
    event Executed(uint256 indexed id, bool passed);
    event ValidatorsChanged(address[] validators, uint256 threshold);

    error BadConfig();
    error RoundNotIncreasing(uint64 round, uint64 lastRound);
    error LengthMismatch();
    error ZeroScores();
    error NotEnoughSignatures(uint256 got, uint256 needed);
    error BadSignature(uint256 index);
    error SignersNotAscending(uint256 index);
    error NotValidator(address signer);
    error NotShareholder();
    error UnknownProposal();
    error VotingClosed();
    error AlreadyVoted();
    error VotingOpen();
    error AlreadyExecuted();

    constructor(bytes32 manifestHash_, address[] memory validators_, uint256 threshold_, uint256 sharesPerRound_, uint256 quorumBps_) {
        manifestHash = manifestHash_;
        if (quorumBps_ > 10_000 || sharesPerRound_ == 0) revert BadConfig();
        sharesPerRound = sharesPerRound_;
        quorumBps = quorumBps_;
        deployBlock = block.number;
        _setValidators(validators_, threshold_);
    }

    function _checkValidators(address[] memory vs, uint256 m) private pure {
        if (m == 0 || m > vs.length) revert BadConfig();
        for (uint256 i = 0; i < vs.length; i++) {
            if (vs[i] == address(0)) revert BadConfig();
            for (uint256 j = 0; j < i; j++) if (vs[j] == vs[i]) revert BadConfig();
        }
    }

    function _setValidators(address[] memory vs, uint256 m) private {
        _checkValidators(vs, m);
        for (uint256 i = 0; i < validatorList.length; i++) isValidator[validatorList[i]] = false;
        delete validatorList;
        for (uint256 i = 0; i < vs.length; i++) {
            isValidator[vs[i]] = true;
            validatorList.push(vs[i]);
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

    function mintRound(
        uint64 round, bytes32 weightsHash, bytes calldata checkpointCid, bytes32 updatesRoot, bytes32 scoresRoot,
        address[] calldata recipients, uint256[] calldata scores, bytes[] calldata signatures
    ) external returns (uint256 minted) {
        if (anyRound && round <= lastRound) revert RoundNotIncreasing(round, lastRound);
        if (recipients.length != scores.length) revert LengthMismatch();
        if (signatures.length < threshold) revert NotEnoughSignatures(signatures.length, threshold);
        bytes32 digest = reportDigest(round, weightsHash, checkpointCid, updatesRoot, scoresRoot, recipients, scores);
        address prev = address(0);
        for (uint256 i = 0; i < signatures.length; i++) {
            address s = _recover(digest, signatures[i], i);
            if (s <= prev) revert SignersNotAscending(i);
            if (!isValidator[s]) revert NotValidator(s);
            prev = s;
        }
        uint256 total = 0;
        for (uint256 i = 0; i < scores.length; i++) total += scores[i];
        if (total == 0) revert ZeroScores();
        // effects: record the round before minting (the mint makes no external calls anyway)
        lastRound = round;
        anyRound = true;
        for (uint256 i = 0; i < recipients.length; i++) {
            uint256 amt = (sharesPerRound * scores[i]) / total; // floor; remainder is not minted
            if (amt > 0) { _mint(recipients[i], amt); minted += amt; }
        }
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
    function validators() external view returns (address[] memory) { return validatorList; }
    function isMinted(uint64 round) external view returns (bool) { return rounds[round].minted != 0 || (anyRound && round == lastRound); }

    // ---------------------------------------------------------------- governance

    function propose(bytes32 key, bytes calldata value, uint64 duration) external returns (uint256 id) {
        if (balanceOf[msg.sender] == 0) revert NotShareholder();
        if (key == VALIDATORS_KEY) {
            (address[] memory vs, uint256 m) = abi.decode(value, (address[], uint256));
            _checkValidators(vs, m);
        }
        id = proposals.length;
        uint64 deadline = uint64(block.timestamp) + duration;
        proposals.push(Proposal(key, msg.sender, deadline, false, false, 0, 0, totalSupply, value));
        emit Proposed(id, key, value, deadline);
    }

    function vote(uint256 id, bool support) external {
        if (id >= proposals.length) revert UnknownProposal();
        Proposal storage p = proposals[id];
        if (block.timestamp >= p.deadline) revert VotingClosed();
        if (hasVoted[id][msg.sender]) revert AlreadyVoted();
        uint256 w = balanceOf[msg.sender];
        if (w == 0) revert NotShareholder();
        hasVoted[id][msg.sender] = true;
        if (lockedUntil[msg.sender] < p.deadline) lockedUntil[msg.sender] = p.deadline;
        if (support) p.yes += w; else p.no += w;
        emit Voted(id, msg.sender, support, w);
    }

    function execute(uint256 id) external returns (bool passed) {
        if (id >= proposals.length) revert UnknownProposal();
        Proposal storage p = proposals[id];
        if (block.timestamp < p.deadline) revert VotingOpen();
        if (p.executed) revert AlreadyExecuted();
        p.executed = true;
        passed = (p.yes + p.no) * 10_000 >= p.supplyAtStart * quorumBps && p.yes > p.no;
        p.passed = passed;
        if (passed) {
            config[p.key] = p.value;
            if (p.key == VALIDATORS_KEY) {
                (address[] memory vs, uint256 m) = abi.decode(p.value, (address[], uint256));
                _setValidators(vs, m);
            }
        }
        emit Executed(id, passed);
    }

    function getProposal(uint256 id) external view returns (Proposal memory) { return proposals[id]; }
    function proposalCount() external view returns (uint256) { return proposals.length; }
    function get(bytes32 key) external view returns (bytes memory) { return config[key]; }

    function _lockedUntil(address a) internal view override returns (uint256) { return lockedUntil[a]; }
}
