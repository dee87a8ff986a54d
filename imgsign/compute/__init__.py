"""The compute side: verify an image before an instance boots from it.

* :mod:`~imgsign.compute.image_cache`: verify an image while caching it into Nova's ``_base``;
* :mod:`~imgsign.compute.adoption`: a trust record for a base file Nova downloaded by itself;
* :mod:`~imgsign.compute.trust_record`: what was verified, sealed for later boots;
* :mod:`~imgsign.compute.verified_cache`: the O(1) check of an unchanged base file;
* :mod:`~imgsign.compute.base_lock`: one lock per base, held by every run that checks or changes it;
* :mod:`~imgsign.compute.boot`: the decision "may an instance boot from this base file?";
* :mod:`~imgsign.compute.libvirt_hook`: the libvirt qemu hook's logic (``hooks/libvirt-qemu``);
* :mod:`~imgsign.compute.hook_entry`: the hook's entry point (``imgsign-libvirt-hook``), and
  :mod:`~imgsign.compute.hook_install`: ``imgsign boot install-hook`` (check the host, install the hook);
* :mod:`~imgsign.compute.qemu_img` and :mod:`~imgsign.compute.sealed`: qemu-img inspection and
  conversion, and the sealed JSON files of the state directory (the I/O at this side's edge).
"""
