from django import forms

from accounts.models import SSHKey, User
from accounts.sshkeys import (
    BadSignature,
    InvalidKey,
    PrivateKeyPasted,
    PublicKey,
    challenge_for,
    parse_public_key,
    sign_command,
    verify_signature,
)


class SSHKeyForm(forms.Form):
    """A key is added in two steps: paste it, then paste a signature over a challenge made with it.

    Nothing about other users' keys is said before the signature verifies, so the form is no oracle.
    """

    title = forms.CharField(max_length=100, required=False, help_text="Defaults to the key's comment.")
    public_key = forms.CharField(
        label="Public key",
        widget=forms.Textarea(attrs={"rows": 4, "spellcheck": "false", "autocomplete": "off"}),
        help_text="Begins with ssh-ed25519, ecdsa-sha2-nistp256/384/521 or ssh-rsa.",
    )
    signature = forms.CharField(
        label="Signature",
        required=False,
        widget=forms.Textarea(attrs={"rows": 6, "spellcheck": "false", "autocomplete": "off", "class": "mono"}),
        help_text="What the command above printed, from -----BEGIN SSH SIGNATURE----- to the END line.",
    )

    parsed: PublicKey
    challenge: str = ""
    command: str = ""
    proven = False  # the signature verified: the key may be saved

    def __init__(self, *args, user: User, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.user = user

    def clean_public_key(self) -> str:
        try:
            self.parsed = parse_public_key(self.cleaned_data["public_key"])
        except PrivateKeyPasted as e:
            self.data = self.data.copy()
            self.data["public_key"] = ""  # never echo a private key back
            raise forms.ValidationError(str(e)) from None
        except InvalidKey as e:
            raise forms.ValidationError(str(e)) from None
        self.challenge = challenge_for(self.user.pk, self.parsed.fingerprint)
        self.command = sign_command(self.parsed, self.challenge)
        return self.parsed.openssh

    def clean(self) -> dict:
        data = super().clean()
        if not hasattr(self, "parsed"):
            return data
        if not data.get("title"):
            data["title"] = self.parsed.comment[:100] or self.parsed.key_type
        signature = data.get("signature", "")
        if not signature.strip():
            if self.data.get("step") == "sign":  # the command was shown, and nothing was pasted
                self.add_error("signature", "Run the command above and paste what it prints, to show the key is yours.")
            return data
        try:
            verify_signature(self.parsed, signature, self.challenge)
        except BadSignature as e:
            self.add_error("signature", str(e))
            return data
        if SSHKey.objects.filter(fingerprint=self.parsed.fingerprint).exists():
            self.add_error("public_key", "This key is already registered.")
        self.proven = True
        return data
