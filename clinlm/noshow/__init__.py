"""Medical Appointment No Shows task (Kaggle joniarroba/noshowappointments)."""
