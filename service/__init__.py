"""CallPulse: real-time emotion alerts for contact-center calls."""
