"""The app's doctypes."""
