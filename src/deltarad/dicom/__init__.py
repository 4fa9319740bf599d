"""Real-world input routes: DICOM folders (images, RTSTRUCT, DICOM-SEG) and nnU-Net datasets.

DICOM is parsed with pydicom (and DICOM-SEG with highdicom) here rather than in
:mod:`deltarad.io`: conversion needs every slice's header next to its pixels to check the
geometry, which SimpleITK's series reader hides. Every NIfTI file is still written by
:func:`deltarad.io.write_image`.
"""
