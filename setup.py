"""Packaging for nnunetv2-ciml.

Besides the package, the distribution installs ``nnunetv2_ciml.pth`` into site-packages. Python
runs it at start-up; it appends our shim folder to ``nnUNet_extTrainer`` (keeping what the user
set) so that the stock ``nnUNetv2_train``/``nnUNetv2_predict`` find ``nnUNetTrainerCIML`` without
any export. It imports nothing heavy; ``NNUNETV2_CIML_NO_STARTUP=1`` turns it off (see
``nnunetv2_ciml/registration.py``).
"""
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

HERE = Path(__file__).parent
PTH_NAME = "nnunetv2_ciml.pth"
# Silent when the package is gone (e.g. the source folder of an editable install was deleted): a .pth
# that raises prints a traceback at every Python start-up.
PTH_LINE = ("import sys; exec('try: import nnunetv2_ciml.registration as r\\nexcept ImportError: pass\\n"
            "else: r.register_at_startup()')\n")


class BuildPyWithPth(build_py):
    """Regular installs: the .pth travels at the root of the wheel, i.e. site-packages."""

    def run(self):
        super().run()
        Path(self.build_lib, PTH_NAME).write_text(PTH_LINE)


class EditableWheelWithPth(editable_wheel):
    """Editable installs: the wheel root is where setuptools writes its own start-up .pth files."""

    def _install_namespaces(self, installation_dir, pth_prefix):
        super()._install_namespaces(installation_dir, pth_prefix)
        Path(installation_dir, PTH_NAME).write_text(PTH_LINE)


setup(
    name="nnunetv2-ciml",
    version="0.1.0",
    description="CIML (Complementary Information Mutual Learning) multimodal segmentation as an nnU-Net v2 plugin",
    long_description=(HERE / "README.md").read_text(encoding="utf-8") if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["nnunetv2_ciml", "nnunetv2_ciml.*"]) + ["nnunetv2_ciml.dataset_conversion"],
    package_dir={"nnunetv2_ciml.dataset_conversion": "dataset_conversion"},
    install_requires=[
        "nnunetv2>=2.8.1,<2.9",
        "torch>=2.1.2,!=2.9.*",
        "dynamic-network-architectures>=0.4.4,<0.5",
        "batchgenerators>=0.25.1",
        "SimpleITK>=2.2.1",
        "nibabel>=5",
        "zlib-ng>=0.4",
        "numpy>=1.24",
        "scipy",
        "connected-components-3d>=3.12",
        "matplotlib",
        "tqdm",
    ],
    # The tests compare against independent references: MedPy's hd95 and pytorch-grad-cam's GradCAM.
    extras_require={"test": ["pytest>=7", "pytest-xdist>=3.6", "medpy>=0.5", "grad-cam>=1.5"]},
    entry_points={"console_scripts": ["nnunetv2_ciml=nnunetv2_ciml.cli:main"]},
    cmdclass={"build_py": BuildPyWithPth, "editable_wheel": EditableWheelWithPth},
    license="Apache-2.0",
)
