export const metadata = { title: "Next.js with PostgreSQL and Redis" };

export default function RootLayout({ children }) {
  return (
    <html lang="en">
      <body>{children}</body>
    </html>
  );
}
