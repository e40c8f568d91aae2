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
abstract contract ShareToken {
    string public constant name = "Tessera Run Shares";
    string public constant symbol = "TSHARE";
    uint8 public constant decimals = 18;
    uint256 internal constant MAG = 2 ** 128;

    uint256 public totalSupply;
    mapping(address => uint256) public balanceOf;
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
    error SharesLocked(uint256 until);

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

    function claimable(address a) public view returns (uint256) {
        int256 acc = int256(magnifiedPerShare * balanceOf[a]) + correction[a];
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

    function _lockedUntil(address a) internal view virtual returns (uint256);

    function _transfer(address from, address to, uint256 value) internal {
        uint256 lock = _lockedUntil(from);
        if (lock > block.timestamp) revert SharesLocked(lock);
        uint256 b = balanceOf[from];
        if (b < value) revert InsufficientBalance();
        unchecked { balanceOf[from] = b - value; }
        balanceOf[to] += value;
        int256 c = int256(magnifiedPerShare * value);
        correction[from] += c;
        correction[to] -= c;
        emit Transfer(from, to, value);
    }

    function _mint(address to, uint256 value) internal {
        totalSupply += value;
        balanceOf[to] += value;
        correction[to] -= int256(magnifiedPerShare * value);
        emit Transfer(address(0), to, value);
    }
}
