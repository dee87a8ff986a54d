"""imgsign: sign OpenStack VM images and verify them before they boot."""
