"""CallPulse clients: a telephony bridge emulator, alert subscribers and the demo."""
