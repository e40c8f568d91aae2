// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// @title ShareToken — minimal ERC-20 shares with an exact pro-rata revenue accumulator.
/// @notice Shares are minted only by the inheriting run contract. Anyone can `pay()` ETH for model
///         usage; every holder can `claim()` their pro-rata part.
///
/// Accumulator ("magnified dividend per share", as in ERC-2222 / Roger Wu's pattern):
///   magnifiedPerShare += (value * MAG + carry) / totalSupply, carry = remainder (kept, never lost)
///   owed(a)            = (magnifiedPerShare * balance(a) + correction(a)) / MAG - withdrawn(a)
/// Mints and transfers adjust `correction` so a balance change never changes what was already earned.
///
/// "Exact" means: (1) no wei is created: sum of everything ever claimable <= total paid;
/// (2) nothing is lost beyond flooring: total paid - sum of claimable < (number of holders + 1) wei,
///     because the only rounding is one floor per account (<1 wei each) plus the carried remainder,
///     which is < totalSupply / MAG < 1 wei and is re-injected into the next payment.
/// Claims use checks-effects-interactions and a reentrancy guard; a failed ETH send reverts the claim.
///
/// Voting power snapshots (for the run's governance): `_snapshot()` marks the current block; the
/// balance "at" a snapshot block S is the balance at the END of block S (so a loan taken and repaid
/// within block S counts for nothing). History is written lazily, as in ERC20Snapshot: on the first
/// balance change of an account after a snapshot block, its previous balance is pushed with the
/// block number. An account that does not move between proposals writes no history, so a mint
/// costs the same as without snapshots unless a proposal was made since the holder's last change.
/// Shares are never locked: a transfer after the snapshot moves no voting power.
abstract contract ShareToken {
    string public constant name = "Tessera Run Shares";
    string public constant symbol = "TSHARE";
    uint8 public constant decimals = 18;
    uint256 internal constant MAG = 2 ** 128;

    uint256 public totalSupply;
    /// balance (uint208: mints beyond 4e62 revert) and the block of the account's last history entry
    struct Holding {
        uint208 balance;
        uint48 histBlock;
    }
    /// (block B, balance at the start of block B) = balance at the end of every snapshot before B
    struct Hist {
        uint48 blk;
        uint208 value;
    }
    mapping(address => Holding) private holding;
    mapping(address => Hist[]) private hist;
    Hist[] private supplyHist;
    /// the latest snapshot block, the one before it (0 = none), the block of the last supply entry
    uint48 private snapBlock;
    uint48 private prevSnapBlock;
    uint48 private supplyHistBlock;
    mapping(address => mapping(address => uint256)) public allowance;

    uint256 public magnifiedPerShare;
    uint256 public magnifiedCarry;
    uint256 public totalPaid;
    uint256 public totalClaimed;
    mapping(address => int256) internal correction;
    mapping(address => uint256) public withdrawn;
    uint256 private entered = 1;

    event Transfer(address indexed from, address indexed to, uint256 value);
    event Approval(address indexed owner, address indexed spender, uint256 value);
    event Paid(address indexed payer, uint256 value, bytes32 memo);
    event Claimed(address indexed holder, uint256 value);

    error NoShares();
    error ZeroPayment();
    error InsufficientBalance();
    error InsufficientAllowance();
    error Reentrancy();
    error SendFailed();
    error SupplyOverflow();

    modifier nonReentrant() {
        if (entered != 1) revert Reentrancy();
        entered = 2;
        _;
        entered = 1;
    }

    function transfer(address to, uint256 value) external returns (bool) {
        _transfer(msg.sender, to, value);
        return true;
    }

    function approve(address spender, uint256 value) external returns (bool) {
        allowance[msg.sender][spender] = value;
        emit Approval(msg.sender, spender, value);
        return true;
    }

    function transferFrom(address from, address to, uint256 value) external returns (bool) {
        uint256 a = allowance[from][msg.sender];
        if (a != type(uint256).max) {
            if (a < value) revert InsufficientAllowance();
            allowance[from][msg.sender] = a - value;
        }
        _transfer(from, to, value);
        return true;
    }

    /// @notice Pay for model usage. Split pro rata over current shareholders.
    function pay(bytes32 memo) external payable {
        if (msg.value == 0) revert ZeroPayment();
        uint256 supply = totalSupply;
        if (supply == 0) revert NoShares();
        uint256 m = msg.value * MAG + magnifiedCarry;
        magnifiedPerShare += m / supply;
        magnifiedCarry = m % supply;
        totalPaid += msg.value;
        emit Paid(msg.sender, msg.value, memo);
    }

    function balanceOf(address a) public view returns (uint256) {
        return holding[a].balance;
    }

    function claimable(address a) public view returns (uint256) {
        int256 acc = int256(magnifiedPerShare * uint256(holding[a].balance)) + correction[a];
        return uint256(acc) / MAG - withdrawn[a];
    }

    function claim() external nonReentrant returns (uint256 amount) {
        amount = claimable(msg.sender);
        if (amount == 0) return 0;
        withdrawn[msg.sender] += amount; // effects before interaction
        totalClaimed += amount;
        emit Claimed(msg.sender, amount);
        (bool ok, ) = msg.sender.call{value: amount}("");
        if (!ok) revert SendFailed();
    }

    /// The latest snapshot strictly before the current block: the one whose end-of-block balances
    /// a change in this block must preserve (a snapshot in this block still includes the change).
    function _openSnapshot() private view returns (uint48) {
        uint48 sb = snapBlock;
        return sb < block.number ? sb : prevSnapBlock;
    }

    /// Take a snapshot at this block (voting power = balances at the end of it). Returns the block.
    function _snapshot() internal returns (uint48 blk) {
        blk = uint48(block.number);
        if (snapBlock != blk) {
            prevSnapBlock = snapBlock;
            snapBlock = blk;
        }
    }

    /// Record `a`'s balance before its first change after the open snapshot; `h` is its holding.
    function _keep(address a, Holding memory h) private {
        uint48 open = _openSnapshot();
        if (open != 0 && h.histBlock <= open) {
            hist[a].push(Hist(uint48(block.number), h.balance));
            h.histBlock = uint48(block.number);
        }
    }

    function _keepSupply() internal {
        uint48 open = _openSnapshot();
        if (open != 0 && supplyHistBlock <= open) {
            supplyHist.push(Hist(uint48(block.number), uint208(totalSupply)));
            supplyHistBlock = uint48(block.number);
        }
    }

    /// First entry recorded after block `blk` (binary search), or the current value if none.
    function _at(Hist[] storage hs, uint256 blk, uint256 current) private view returns (uint256) {
        uint256 lo = 0;
        uint256 hi = hs.length;
        while (lo < hi) {
            uint256 mid = (lo + hi) / 2;
            if (hs[mid].blk > blk) hi = mid;
            else lo = mid + 1;
        }
        return lo == hs.length ? current : hs[lo].value;
    }

    /// Balance at the end of snapshot block `blk` (only meaningful for a block `_snapshot` marked,
    /// once that block is over).
    function _balanceAt(address a, uint256 blk) internal view returns (uint256) {
        return _at(hist[a], blk, holding[a].balance);
    }

    function _supplyAt(uint256 blk) internal view returns (uint256) {
        return _at(supplyHist, blk, totalSupply);
    }

    function _transfer(address from, address to, uint256 value) internal {
        Holding memory f = holding[from];
        if (f.balance < value) revert InsufficientBalance();
        _keep(from, f);
        unchecked { f.balance -= uint208(value); }
        holding[from] = f;
        if (to != from) {
            Holding memory t = holding[to];
            _keep(to, t);
            t.balance += uint208(value); // <= supply < 2^208
            holding[to] = t;
        } else {
            holding[from].balance += uint208(value);
        }
        int256 c = int256(magnifiedPerShare * value);
        correction[from] += c;
        correction[to] -= c;
        emit Transfer(from, to, value);
    }

    /// Mint without touching totalSupply: the caller adds the total once (and keeps its history).
    function _mintTo(address to, uint256 value) internal {
        Holding memory t = holding[to];
        _keep(to, t);
        t.balance += uint208(value); // the caller checked the supply bound
        holding[to] = t;
        correction[to] -= int256(magnifiedPerShare * value);
        emit Transfer(address(0), to, value);
    }

    function _addSupply(uint256 value) internal {
        _keepSupply();
        uint256 s = totalSupply + value;
        if (s > type(uint208).max) revert SupplyOverflow();
        totalSupply = s;
    }
}
