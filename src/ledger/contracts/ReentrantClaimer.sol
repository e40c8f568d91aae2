// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

interface IClaim {
    function claim() external returns (uint256);
}

/// @notice Test-only attacker: re-enters claim() from receive(). Must not be paid twice.
contract ReentrantClaimer {
    IClaim public immutable target;
    uint256 public reentries;

    constructor(IClaim t) { target = t; }

    function attack() external returns (uint256) {
        return target.claim();
    }

    receive() external payable {
        reentries += 1;
        target.claim(); // the guard makes this revert, which fails the outer send, which reverts all
    }
}
