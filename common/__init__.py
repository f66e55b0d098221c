"""What every service shares: the contracts they speak, and the platform they run on."""
